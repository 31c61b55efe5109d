"""Jobs that this Slurm cluster can never start, refused before the first submission.

Slurm accepts a job for a partition without GPUs, or larger than any of its nodes, and
leaves it pending (`PartitionConfig`, `ReqNodeNotAvail`, `Resources`) while Snakemake
waits without a word. At the start of a run with the slurm executor, every job about to be
submitted is checked against the cluster's partitions and nodes (`scontrol show partition`
and `scontrol show node`); the first job that cannot fit ends the run with one line that
names the rule, what it asks for, what the partition offers, and the SITE setting to change.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass, field

PROFILE = "profiles/slurm/config.yaml"


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    partitions: tuple[str, ...]


@dataclass
class Partition:
    name: str
    default: bool
    up: bool
    max_minutes: float  # math.inf when unlimited
    nodes: list[Node] = field(default_factory=list)


@dataclass
class Request:
    """What one job asks Slurm for (per node: CPUs, memory, GPUs)."""

    rule: str
    partition: str | None  # None: the cluster's default
    nodes: int
    cpus: int
    memory_mb: int
    gpus: int
    minutes: float


def scontrol(what: str) -> str:
    done = subprocess.run(["scontrol", "show", what, "-o"], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"error: `scontrol show {what}` failed ({reason}): run the slurm profile "
                 "where Slurm's commands reach the cluster (a login node)")  # fmt: skip
    return done.stdout


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", line))


def layout(partitions_text: str, nodes_text: str) -> dict[str, Partition]:
    """The cluster from `scontrol show partition -o` and `scontrol show node -o`."""
    partitions = {}
    for line in partitions_text.splitlines():
        f = fields(line)
        if "PartitionName" in f:
            partitions[f["PartitionName"]] = Partition(
                f["PartitionName"], f.get("Default") == "YES", f.get("State") == "UP",
                slurm_minutes(f.get("MaxTime", "UNLIMITED")),
            )  # fmt: skip
    for line in nodes_text.splitlines():
        f = fields(line)
        if "NodeName" not in f:
            continue
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", f.get("Gres", "")))
        node = Node(f["NodeName"], int(f.get("CPUTot", 0)), int(f.get("RealMemory", 0)), gpus,
                    tuple(p for p in f.get("Partitions", "").split(",") if p))  # fmt: skip
        for name in node.partitions:
            if name in partitions:
                partitions[name].nodes.append(node)
    return partitions


def slurm_minutes(text: str) -> float:
    """A time limit as scontrol prints it ([days-]hours:minutes:seconds, UNLIMITED) in minutes."""
    if text in ("UNLIMITED", "INFINITE", ""):
        return math.inf
    days, _, clock = text.rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def request(job) -> Request:
    """A Snakemake job's request, as snakemake-executor-plugin-slurm submits it."""
    res = job.resources
    nodes = int(res.get("nodes", 1) or 1)
    tasks = int(res.get("tasks", 1) or 1)
    per_node = math.ceil(tasks / nodes)
    cpus = int(res.get("cpus_per_task", 0) or job.threads)
    return Request(
        rule=job.rule.name, partition=res.get("slurm_partition") or None, nodes=nodes,
        cpus=max(cpus, 1) * per_node, memory_mb=int(res.get("mem_mb", 0) or 0),
        gpus=math.ceil(int(res.get("gpu", 0) or 0) / nodes),
        minutes=float(res.get("runtime", 0) or 0),
    )  # fmt: skip


def why_not(req: Request, partitions: dict[str, Partition]) -> str | None:
    """Why Slurm could never start this job, or None when some nodes fit it."""
    default = next((p.name for p in partitions.values() if p.default), None)
    name = req.partition or default
    where = f"partition {name!r}" + ("" if req.partition else " (the cluster's default)")
    if name not in partitions:
        have = ", ".join(partitions)
        return f"asks for partition {name!r}, which this cluster does not have (it has: {have})"
    part = partitions[name]
    if not part.up:
        return f"goes to {where}, which is not UP"
    if req.gpus and not any(n.gpus for n in part.nodes):
        gpu_parts = [p.name for p in partitions.values() if any(n.gpus for n in p.nodes)]
        return (f"asks for {req.gpus} GPU(s) in {where}, whose nodes have none (partitions "
                f"with GPUs: {', '.join(gpu_parts) or 'none'})")  # fmt: skip
    fit = [n for n in part.nodes if n.cpus >= req.cpus and n.memory_mb >= req.memory_mb
           and n.gpus >= req.gpus]  # fmt: skip
    if len(fit) < req.nodes:
        largest = max(part.nodes, key=lambda n: (n.gpus, n.cpus, n.memory_mb), default=None)
        offer = (f"its largest node has {largest.cpus} CPUs, {largest.memory_mb} MB, "
                 f"{largest.gpus} GPU(s)") if largest else "it has no nodes"  # fmt: skip
        return (f"asks for {req.nodes} node(s) with {req.cpus} CPUs, {req.memory_mb} MB and "
                f"{req.gpus} GPU(s) each in {where}, where {len(fit)} node(s) fit ({offer})")  # fmt: skip
    if req.minutes > part.max_minutes:
        limit = f"{part.max_minutes:g} min"
        return f"asks for {req.minutes:g} min in {where}, whose time limit is {limit}"
    return None


def how_to_fix(req: Request) -> str:
    if req.gpus:
        return (
            f"set gpu_jobs (slurm_partition, cpus_per_task, mem_mb, runtime) in {PROFILE} "
            "(SITE), or pass --config 'gpu_jobs={slurm_partition: NAME}'"
        )
    return (
        f"set default-resources (slurm_partition, cpus_per_task, mem_mb, runtime) in "
        f"{PROFILE} (SITE), or pass --set-resources {req.rule}:KEY=VALUE"
    )


def refuse_impossible_jobs(workflow) -> None:
    """Exit with one line when a job of this run can never start on this cluster (onstart)."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or workflow.remote_exec:
        return
    partitions = layout(scontrol("partition"), scontrol("node"))
    for job in workflow.dag.needrun_jobs():
        req = request(job)
        if problem := why_not(req, partitions):
            sys.exit(f"error: Slurm can never start rule {req.rule}: it {problem}; "
                     f"{how_to_fix(req)}")  # fmt: skip
