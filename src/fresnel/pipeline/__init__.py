"""Glue between the stage logic and the two workflow tools (Snakemake runs jobs, DVC
versions their outputs). Stage modules never import from here."""
