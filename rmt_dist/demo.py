"""python -m rmt_dist.demo: the whole rmt-dist workflow on an embedded real dataset.

Stages (each reused when already finished, so a re-run is quick):
  1. data      scikit-learn's handwritten digits -> ImageFolder -> train/val .beton (FFCV)
  2. teacher   a small RMT trained with 2 processes (launch/local.py): EMA, checkpoints, TensorBoard
  3. labels    token labels for the training set from that teacher (rmt_dist.tokenlabel.generate)
  4. student   a token-label (starred) RMT trained with dense targets and MixToken
  5. report    top-1 of teacher, student and their EMAs, images/s, wall time, where things are

Runs on CPU in minutes; `--quick` is the shortened version the tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .checkpoint_format.dirs import METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _stage(n: int, text: str) -> None:
    print(f"\n[{n}/5] {text}", flush=True)


def _run(cmd: list[str]) -> None:
    print("  $ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise SystemExit(f"demo: stage failed (exit {rc}): {' '.join(cmd)}")


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finished(run_dir: Path) -> bool:
    from .launching.rundir import is_finished

    return is_finished(run_dir)


def _summary(run_dir: Path, wall_s: float | None) -> dict:
    """The final evaluation (the engine evaluates model and EMA at every epoch end) and speed."""
    recs = _records(run_dir)
    evals = [r for r in recs if "eval/top1" in r]
    train = [r for r in recs if "img_per_s" in r][1:]  # the first step includes warm-up
    last = evals[-1] if evals else {}
    return {
        "top1": last.get("eval/top1"),
        "ema_top1": last.get("eval_ema/top1"),
        "img_per_s": sum(r["img_per_s"] for r in train) / len(train) if train else None,
        "wall_s": wall_s,
    }


class _Timings:
    """Wall time of each stage, kept in OUT/timings.json so a re-run still reports them."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name: str, cmd: list[str]) -> None:
        t = time.time()
        _run(cmd)
        self.data[name] = time.time() - t
        self.path.write_text(json.dumps(self.data, indent=1))


def _fmt(v, spec: str) -> str:
    """format(v, spec), or a dash of the same width when there is no value."""
    width = int(spec.split(".")[0] or 0)
    return f"{'-':>{width}}" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rmt_dist.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="where data, runs and labels go (default: runs/demo)")
    p.add_argument(
        "--nproc", type=int, default=2, help="training processes (default: 2, the distributed path)"
    )
    p.add_argument("--quick", action="store_true", help="a few steps per stage (the test suite's version)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    py = sys.executable
    t0 = time.time()
    quick = ["optim.epochs=2", "optim.warmup_epochs=1"] if args.quick else []

    _stage(1, "data: handwritten digits (scikit-learn) -> FFCV betons")
    from .data.digits import prepare_digits

    train_beton, val_beton = prepare_digits(out / "data", size=64)
    timings = _Timings(out / "timings.json")
    data = [f"data.train={train_beton}", f"data.val={val_beton}"]

    teacher_dir, student_dir, store = out / "teacher", out / "student", out / "data" / "train.tokenlabel"
    _stage(2, f"teacher: RMT on {args.nproc} processes -> {teacher_dir}")
    if _finished(teacher_dir):
        print("  finished earlier; reusing it")
    else:
        timings.run(
            "teacher",
            [
                py,
                str(ROOT / "launch/local.py"),
                str(RECIPES / "demo_teacher.yaml"),
                *data,
                f"run.dir={teacher_dir}",
                *quick,
                "--nproc",
                str(args.nproc),
            ],
        )

    _stage(3, f"token labels from the teacher -> {store}")
    from .tokenlabel.store import StoreMeta

    if (store / "meta.json").is_file() and StoreMeta.read(store).complete:
        print("  complete earlier; reusing it")
    else:
        timings.run(
            "labels",
            [
                py,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={args.nproc}",
                "-m",
                "rmt_dist.tokenlabel.generate",
                str(train_beton),
                str(store),
                "--teacher",
                "rmt_test",
                "--checkpoint",
                str(teacher_dir),
                "--img-size",
                "64",
                "--workers",
                "1",
                "--overwrite",
            ],
        )

    _stage(4, f"student: token-label RMT* with MixToken -> {student_dir}")
    if _finished(student_dir):
        print("  finished earlier; reusing it")
    else:
        timings.run(
            "student",
            [
                py,
                str(ROOT / "launch/local.py"),
                str(RECIPES / "demo_student.yaml"),
                *data,
                f"tokenlabel.store={store}",
                f"run.dir={student_dir}",
                *quick,
                "--nproc",
                str(args.nproc),
            ],
        )

    _stage(5, "report")
    t = _summary(teacher_dir, timings.data.get("teacher"))
    s = _summary(student_dir, timings.data.get("student"))
    rows = [
        ("teacher (RMT)", t["top1"], t["img_per_s"], t["wall_s"]),
        ("teacher EMA", t["ema_top1"], None, None),
        ("student (RMT*, token labels)", s["top1"], s["img_per_s"], s["wall_s"]),
        ("student EMA", s["ema_top1"], None, None),
    ]
    print(f"\n{'model':<30} {'val top-1 %':>11} {'train img/s':>12} {'wall s':>8}")
    for name, top1, ips, wall in rows:
        print(f"{name:<30} {_fmt(top1, '11.2f')} {_fmt(ips, '12.1f')} {_fmt(wall, '8.1f')}")
    labels_s = timings.data.get("labels")
    print(
        f"\ntoken labels: {_fmt(labels_s, '.1f')} s; chance is 10.00%; this invocation took {time.time() - t0:.0f} s"
    )
    print(f"checkpoints: {teacher_dir / 'checkpoints'}  {student_dir / 'checkpoints'}")
    print(f"TensorBoard: {py} -m tensorboard.main --logdir {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
