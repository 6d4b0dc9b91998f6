"""Launching runs: SLURM environment -> torch.distributed env, sbatch parameters, the job callable.

Import what you need from the submodules (`dist_env`, `sbatch`,
`task`, `rundir`, `requeue`, `preflight`, `sweep`, `record`; the process counts of a recipe are config.job_size);
nothing here imports torch or submitit at package import time.
"""
