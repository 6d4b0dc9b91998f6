"""`python -m rmt_dist.compare RUN_DIR [--reference NAME] [--out PNG]`: a run beside the paper's run.

Prints, per evaluated epoch, the run's eval top-1 and EMA top-1 beside the official run's
(qhfan/RMT RMT_log, rmt_dist/reference), and the run's lr beside the official lr; then
says at which epochs the run is more than 1 point behind. Writes the same as a PNG
(default RUN_DIR/compare.png): accuracy per epoch, and lr per epoch.

The reference defaults to the recipe's run.reference. Epochs are numbered as both logs
number them (0 = the first). The official `train_lr` of epoch e is the mean lr epoch e
trained with (qhfan/RMT classfication_release/engine.py logs optimizer.param_groups[0]["lr"]
at every step); its one-epoch lag is in the schedule, not the log (main.py steps timm's
scheduler after each epoch: epochs 0 and 1 both train at 1e-6). So "paper lr" is the log's
value at e, beside the run's lr at the start of epoch e; with `optim.schedule: per_epoch_timm`
(the official recipes) the two are equal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import reference as official
from .checkpoint_format.dirs import METRICS_FILE
from .errors import EXIT_FAILED, report
from .status import StatusError, read_config, read_metrics

BEHIND_POINTS = 1.0


def epoch_lrs(train: list[dict]) -> dict[int, float]:
    """The lr of each epoch's first logged step (the schedule's value near the epoch start)."""
    out: dict[int, float] = {}
    for r in train:
        if r.get("lr") is not None:
            out.setdefault(int(r["epoch"]), r["lr"])
    return out


def rows(run_dir: Path, ref_name: str) -> list[dict]:
    train, evals = read_metrics(run_dir)
    ref = official.reference(ref_name)
    idx = {e: i for i, e in enumerate(ref["epoch"])}
    lrs = epoch_lrs(train)
    out = []
    epochs = sorted({int(e["epoch"]) for e in evals} | set(lrs))
    by_epoch = {int(e["epoch"]): e for e in evals}
    for ep in epochs:
        e = by_epoch.get(ep, {})
        i = idx.get(ep)
        out.append(
            {
                "epoch": ep,
                "top1": e.get("eval/top1"),
                "paper_top1": ref["test_acc1"][i] if i is not None else None,
                "ema_top1": e.get("eval_ema/top1"),
                "paper_ema_top1": ref["test_ema_acc1"][i] if i is not None else None,
                "lr": lrs.get(ep),
                "paper_lr": ref["train_lr"][i] if i is not None else None,
            }
        )
    return out


def behind(table: list[dict]) -> list[tuple[int, float]]:
    return [
        (r["epoch"], r["top1"] - r["paper_top1"])
        for r in table
        if r["top1"] is not None
        and r["paper_top1"] is not None
        and r["top1"] < r["paper_top1"] - BEHIND_POINTS
    ]


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(table: list[dict], ref_name: str) -> str:
    head = f"{'epoch':>5}  {'top1':>6}  {'paper':>6}  {'EMA':>6}  {'paper':>6}  {'lr':>10}  {'paper lr':>10}  note"
    lines = [f"run vs {ref_name} (paper = qhfan/RMT {official.source()['files'][ref_name]})", head]
    for r in table:
        gap = (r["top1"] - r["paper_top1"]) if r["top1"] is not None and r["paper_top1"] is not None else None
        note = f"behind by {-gap:.2f}" if gap is not None and gap < -BEHIND_POINTS else ""
        lines.append(
            f"{r['epoch']:>5}  {_f(r['top1'], '6.2f')}  {_f(r['paper_top1'], '6.2f')}  "
            f"{_f(r['ema_top1'], '6.2f')}  {_f(r['paper_ema_top1'], '6.2f')}  {_f(r['lr'], '10.4e')}  "
            f"{_f(r['paper_lr'], '10.4e')}  {note}".rstrip()
        )
    return "\n".join(lines)


def summary(table: list[dict], ref_name: str) -> str:
    late = behind(table)
    if not any(r["top1"] is not None for r in table):
        return "no eval yet: nothing to compare"
    if not late:
        return f"never more than {BEHIND_POINTS:g} point behind {ref_name} at an evaluated epoch"
    worst = min(late, key=lambda x: x[1])
    epochs = ", ".join(str(e) for e, _ in late[:20]) + (" ..." if len(late) > 20 else "")
    return (
        f"more than {BEHIND_POINTS:g} point behind {ref_name} at {len(late)} epoch(s): {epochs} "
        f"(largest gap {worst[1]:+.2f} at epoch {worst[0]})"
    )


def plot(table: list[dict], train: list[dict], ref_name: str, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    ref = official.reference(ref_name)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ev = [r for r in table if r["top1"] is not None]
    ax1.plot(ref["epoch"], ref["test_acc1"], color="0.6", label=f"paper {ref_name} top-1")
    ax1.plot(ref["epoch"], ref["test_ema_acc1"], color="0.6", ls="--", label=f"paper {ref_name} EMA top-1")
    ax1.plot([r["epoch"] for r in ev], [r["top1"] for r in ev], "o-", color="C0", label="run top-1")
    ax1.plot([r["epoch"] for r in ev], [r["ema_top1"] for r in ev], "s--", color="C1", label="run EMA top-1")
    ax1.set(xlabel="epoch", ylabel="top-1 (%)", title="eval accuracy")
    ax1.legend(loc="lower right", fontsize=8)
    # Both curves are "the lr epoch e trained with" (the official log holds each epoch's mean lr).
    ax2.plot(ref["epoch"], ref["train_lr"], color="0.6", label=f"paper {ref_name} lr")
    if train:
        spe = max(1, max(r["step"] for r in train) / max(1e-9, max(r["epoch"] for r in train) + 1))
        ax2.plot(
            [r["step"] / spe for r in train], [r["lr"] for r in train], color="C0", label="run lr (per step)"
        )
    ax2.set(xlabel="epoch", ylabel="learning rate", title="lr schedule")
    ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rmt_dist.compare",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run.dir of the run")
    p.add_argument(
        "--reference",
        default=None,
        metavar="NAME",
        help=f"official run: {', '.join(official.names())} (default: the recipe's run.reference)",
    )
    p.add_argument("--out", default=None, metavar="PNG", help="plot file (default: RUN_DIR/compare.png)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir)
    try:
        if not (run_dir / METRICS_FILE).is_file():
            raise StatusError(
                f"{str(run_dir)!r} has no metrics.jsonl: not a run dir, or the run has not logged yet"
            )
        ref_name = a.reference or read_config(run_dir).get("run", {}).get("reference")
        if not ref_name:
            raise StatusError(
                f"{str(run_dir)!r}: its recipe sets no run.reference; pass --reference NAME "
                f"({', '.join(official.names())})"
            )
        if ref_name not in official.names():
            raise StatusError(
                f"--reference {ref_name!r} is not an official run; choose one of "
                f"{', '.join(official.names())}"
            )
        table = rows(run_dir, ref_name)
        out = Path(a.out) if a.out else run_dir / "compare.png"
        if out.suffix.lower() != ".png":
            raise StatusError(f"--out {str(out)!r}: the plot is written as PNG; give a path ending in .png")
    except StatusError as e:
        return report(e)
    print(format_table(table, ref_name))
    print(summary(table, ref_name))
    try:
        plot(table, read_metrics(run_dir)[0], ref_name, out, f"{run_dir} vs paper {ref_name}")
    except OSError as e:
        print(
            f"error: cannot write {out}: {e.strerror or e}; pass --out <writable path>.png", file=sys.stderr
        )
        return EXIT_FAILED
    print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
