"""fresnel.pipeline.slurm_site on a cluster described as `scontrol show partition|node -o`
prints it (Slurm 22.05's one-line format; a few fields left out): which requests can never
start, and why. The real cluster's refusal is in test_slurm.py."""

import math
from types import SimpleNamespace

import pytest

from fresnel.pipeline.slurm_site import Request, layout, request, slurm_minutes, why_not

PARTITIONS = """\
PartitionName=cpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=1-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=c[1-2] PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=64 TotalNodes=2 SelectTypeParameters=NONE
PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 Nodes=g[1-2] State=UP TotalCPUs=32 TotalNodes=2
PartitionName=old Default=NO MaxTime=02:00:00 Nodes=c1 State=DOWN TotalNodes=1
"""
NODES = """\
NodeName=c1 Arch=x86_64 CoresPerSocket=16 CPUAlloc=0 CPUEfctv=32 CPUTot=32 CPULoad=0.01 AvailableFeatures=(null) ActiveFeatures=(null) Gres=(null) NodeAddr=c1 NodeHostName=c1 Version=22.05.8 OS=Linux 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01) RealMemory=128000 AllocMem=0 FreeMem=120000 Sockets=2 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=cpu,old CfgTRES=cpu=32,mem=125G,billing=32
NodeName=c2 CPUTot=32 Gres=(null) RealMemory=128000 State=IDLE Partitions=cpu
NodeName=g1 CPUTot=16 Gres=gpu:a100:4(S:0-1) RealMemory=256000 State=IDLE Partitions=gpu CfgTRES=cpu=16,mem=250G,billing=16,gres/gpu=4
NodeName=g2 CPUTot=16 Gres=gpu:2 RealMemory=64000 State=MIXED Partitions=gpu
"""
CLUSTER = layout(PARTITIONS, NODES)


def job(**kw) -> Request:
    values = dict(rule="decoder_train", partition="gpu", nodes=1, cpus=8, memory_mb=32000,
                  gpus=1, minutes=240)  # fmt: skip
    return Request(**{**values, **kw})


def test_the_layout_has_each_partitions_nodes_with_their_cpus_memory_and_gpus():
    assert CLUSTER["cpu"].default and not CLUSTER["gpu"].default and not CLUSTER["old"].up
    assert [(n.name, n.cpus, n.memory_mb, n.gpus) for n in CLUSTER["gpu"].nodes] == [
        ("g1", 16, 256000, 4), ("g2", 16, 64000, 2)]  # fmt: skip
    assert [n.name for n in CLUSTER["old"].nodes] == ["c1"]
    assert CLUSTER["cpu"].max_minutes == 1440 and CLUSTER["gpu"].max_minutes == math.inf


@pytest.mark.parametrize("text, minutes", [("UNLIMITED", math.inf), ("02:00:00", 120),
                                           ("1-00:30:00", 1470), ("00:00:30", 0.5)])  # fmt: skip
def test_slurm_time_limits_in_minutes(text, minutes):
    assert slurm_minutes(text) == minutes


def test_jobs_that_fit_somewhere_pass():
    assert why_not(job(), CLUSTER) is None
    assert why_not(job(gpus=4, memory_mb=200000), CLUSTER) is None  # g1 only
    assert why_not(job(partition=None, gpus=0, cpus=2, memory_mb=4000), CLUSTER) is None
    assert why_not(job(nodes=2, gpus=2, memory_mb=64000), CLUSTER) is None


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"partition": None}, "asks for 1 GPU(s) in partition 'cpu' (the cluster's default), "
                              "whose nodes have none (partitions with GPUs: gpu)"),
        ({"partition": "a100"}, "asks for partition 'a100', which this cluster does not have "
                                "(it has: cpu, gpu, old)"),
        ({"partition": "old", "gpus": 0}, "goes to partition 'old', which is not UP"),
        ({"cpus": 64}, "asks for 1 node(s) with 64 CPUs, 32000 MB and 1 GPU(s) each in "
                       "partition 'gpu', where 0 node(s) fit (its largest node has 16 CPUs, "
                       "256000 MB, 4 GPU(s))"),
        ({"nodes": 2, "gpus": 3}, "where 1 node(s) fit"),
        ({"partition": None, "gpus": 0, "minutes": 2000}, "asks for 2000 min in partition "
                                                          "'cpu' (the cluster's default), whose "
                                                          "time limit is 1440 min"),
    ],
)  # fmt: skip
def test_jobs_no_node_can_take_are_named_with_the_reason(changes, reason):
    assert reason in why_not(job(**changes), CLUSTER)


def test_a_snakemake_jobs_request_is_per_node_as_the_slurm_plugin_submits_it():
    def snakemake_job(threads=1, **resources):
        return SimpleNamespace(rule=SimpleNamespace(name="r"), threads=threads,
                               resources=resources)  # fmt: skip

    assert request(snakemake_job(threads=4, mem_mb=1000)) == Request(
        "r", None, nodes=1, cpus=4, memory_mb=1000, gpus=0, minutes=0)  # fmt: skip
    ranks = snakemake_job(gpu=4, tasks=4, nodes=2, cpus_per_task=8, slurm_partition="gpu",
                          runtime=60)  # fmt: skip
    assert request(ranks) == Request("r", "gpu", nodes=2, cpus=16, memory_mb=0, gpus=2,
                                     minutes=60)  # fmt: skip
