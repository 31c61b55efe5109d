"""Run every benchmark; results land in benchmarks/results/*.json."""

import runpy
from pathlib import Path

HERE = Path(__file__).parent
for script in (
    "pipeline_overhead.py",
    "features_throughput.py",
    "renderer_speed.py",
    "hfts_fast_mode.py",
    "slurm_overhead.py",  # needs root and the Slurm packages (make system-packages)
):
    print(f"== {script}")
    runpy.run_path(str(HERE / script), run_name="__main__")
