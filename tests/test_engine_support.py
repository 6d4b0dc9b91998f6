"""Helpers for the engine tests: 2-rank gloo groups from a fork server, small configs, and reading run
directories back. The tests at the end check that `run_ranks` cannot hide a failing rank:
every 2-rank test relies on it to fail when a rank does."""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rmt_dist.config import Config, load_config

SMOKE = "recipes/smoke.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args, errdir: str, env: dict) -> None:
    os.environ.update(env)  # the test's environment now, not the fork server's at its start
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two ranks on two cores
    try:
        fn(rank, world, *args)
    except BaseException:
        Path(errdir, f"rank{rank}.err").write_text(traceback.format_exc())
        raise


# Ranks fork from a clean server process that imported these once, not from pytest's own
# process: by the time the engine tests run, earlier tests have started autograd, inductor
# and loader threads there, and a fork taken while one of them holds a lock deadlocks the
# child (seen: a DeepSpeed rank stuck forever in an import) or fails in autograd.
_SERVER_PRELOAD = ["torch", "rmt_dist.engine.run", "rmt_dist.models", "deepspeed"]


def run_ranks(fn, world: int, *args, tmp: Path) -> None:
    """Run fn(rank, world, *args) in `world` processes forked from the fork server (the heavy
    imports are paid once per test session); a failure re-raises with the rank's traceback."""
    errdir = tmp / "errors"
    errdir.mkdir(parents=True, exist_ok=True)
    mp.set_forkserver_preload(_SERVER_PRELOAD)  # read once, when the server first starts
    try:
        mp.start_processes(
            _entry,
            args=(world, free_port(), fn, args, str(errdir), dict(os.environ)),
            nprocs=world,
            start_method="forkserver",
        )
    except Exception as e:
        details = "\n".join(p.read_text() for p in sorted(errdir.glob("*.err")))
        raise AssertionError(f"a rank failed:\n{details}") from e


def config(run_dir: Path, strategy: str, *overrides: str, data: Path | None = None) -> Config:
    data_over = [f"data.train={data}/train.beton", f"data.val={data}/val.beton"] if data else []
    return load_config(
        SMOKE,
        [
            f"run.dir={run_dir}",
            f"strategy.name={strategy}",
            "run.log_every=1",
            "data.num_workers=1",
            *data_over,
            *overrides,
        ],
    )


def records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float | None]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def digits_dir(tmp_path_factory) -> Path:
    """The real digits betons' folder, built once per test session and shared by all test files."""
    from data_helpers import digits_betons

    return digits_betons(tmp_path_factory.getbasetemp())[0].parent


def _fail_on_rank_1(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 refuses")


def _write_env(rank: int, world: int, out: str) -> None:
    Path(out, f"rank{rank}").write_text(f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}")


def test_run_ranks_fails_with_the_failing_ranks_traceback(tmp_path):
    with pytest.raises(AssertionError, match="rank 1 refuses"):
        run_ranks(_fail_on_rank_1, 2, tmp=tmp_path)


def test_run_ranks_runs_every_rank_with_its_environment(tmp_path):
    run_ranks(_write_env, 2, str(tmp_path), tmp=tmp_path)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["0/2", "1/2"]
