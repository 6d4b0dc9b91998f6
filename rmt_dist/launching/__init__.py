"""Launching runs: SLURM environment -> torch.distributed env, sbatch parameters, the job callable.

Import what you need from the submodules (`env`: process counts of a recipe, `dist_env`, `sbatch`,
`task`, `rundir`, `requeue`, `preflight`);
nothing here imports torch or submitit at package import time.
"""
