"""How many processes a SLURM recipe launches: read by derive-time printing (python -m rmt_dist.config) and the launchers."""

from __future__ import annotations

from .schema import SlurmConfig


def tasks_per_node(slurm: SlurmConfig) -> int:
    """One task per GPU; CPU-only jobs (gpus_per_node=0) default to one task per node."""
    if slurm.tasks_per_node is not None:
        return slurm.tasks_per_node
    return slurm.gpus_per_node if slurm.gpus_per_node > 0 else 1


def world_size(slurm: SlurmConfig) -> int:
    """Ranks of the whole job: nodes x tasks per node."""
    return slurm.nodes * tasks_per_node(slurm)
