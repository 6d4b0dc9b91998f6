"""The SLURM task environment -> the torchrun-style variables the training entry point reads.

Every task of a job computes the same MASTER_ADDR/MASTER_PORT without talking to the
others: the first host of the job's node list and a port derived from the job id.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .hostlist import hostnames

# Ports 15000-29999: below Linux's ephemeral range (32768+), so an outgoing connection
# never holds the rendezvous port; two jobs collide only if their ids differ by 15000k
# and they share a first node.
PORT_BASE, PORT_SPAN = 15000, 15000

# Set by the launchers for the rank processes they start: how long the teardown after
# training may take before the rank ends itself (rmt_dist.engine.preempt.guard_teardown).
TEARDOWN_TIMEOUT_ENV, TEARDOWN_TIMEOUT_S = "RMT_DIST_TEARDOWN_TIMEOUT_S", 60


def master_port(job_id: int | str) -> int:
    return PORT_BASE + int(job_id) % PORT_SPAN


def _tasks_on_this_node(env: Mapping[str, str]) -> int:
    """SLURM_TASKS_PER_NODE looks like "8(x4)" or "2,1"; SLURM_NTASKS_PER_NODE is set only
    when the job asked for it. Both describe this job's layout."""
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    spec = env.get("SLURM_TASKS_PER_NODE", "1").split(",")
    counts: list[int] = []
    for item in spec:
        n, _, rep = item.partition("(x")
        counts += [int(n)] * (int(rep.rstrip(")")) if rep else 1)
    node = int(env.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else counts[-1]


def torch_env_from_slurm(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK
    for the current SLURM task (`env` defaults to os.environ)."""
    env = os.environ if env is None else env
    missing = [
        k for k in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NODELIST") if k not in env
    ]
    if missing:
        raise RuntimeError(f"not inside a SLURM task: {', '.join(missing)} unset (start it with srun/sbatch)")
    return {
        "MASTER_ADDR": hostnames(env["SLURM_JOB_NODELIST"])[0],
        "MASTER_PORT": str(master_port(env["SLURM_JOB_ID"])),
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_WORLD_SIZE": str(_tasks_on_this_node(env)),
        "NODE_RANK": env.get("SLURM_NODEID", "0"),
    }
