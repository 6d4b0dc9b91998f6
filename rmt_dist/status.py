"""`python -m rmt_dist.status RUN_DIR [RUN_DIR ...]`: where each run is and whether it is on track.

Per run: SLURM job state and requeue count (the job launch.json records, asked of
squeue/scontrol/sacct where they answer, else read from the task log), step and epoch of
the total, images/s, ETA, the last eval (model and EMA, top-1 and top-5), the newest
complete checkpoint and its age, the skipped non-finite / fp16-overflow steps, and the gap
to the paper's run at the same epoch (run.reference, or --reference). One run prints one
field per line; several print one row each.

Reads only files (config.yaml, metrics.jsonl, checkpoints/, launch.json, FINISHED, logs)
and never imports torch, so it answers in well under a second.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import reference as official
from .checkpoint_format.dirs import MARKER, METRICS_FILE, invalid_reason, list_step_dirs, step_of
from .errors import BadInputError, report
from .launching.record import read_launch


class StatusError(BadInputError, ValueError):
    pass


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of metrics.jsonl; a line cut by a crash is skipped."""
    train, evals = [], []
    path = run_dir / METRICS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "eval/top1" in rec or "eval_ema/top1" in rec:
                evals.append(rec)
            elif "loss" in rec:
                train.append(rec)
    return train, evals


def read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def steps_per_epoch(cfg: dict, train: list[dict]) -> int | None:
    """As the loader counts them (drop_last): samples // world // batch // accum, from the beton's meta file."""
    d, der = cfg.get("data", {}), cfg.get("derived", {})
    try:
        meta = json.loads(Path(f"{d['train']}.meta.json").read_text())
        per_rank = int(meta["num_samples"]) // int(der["world_size"])
        full, rest = divmod(per_rank, int(d["batch_size"]))
        steps = full if (d.get("drop_last", True) or rest == 0) else full + 1
        return steps // int(cfg.get("optim", {}).get("accum_steps", 1)) or None
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return None


def steps_per_epoch_from_evals(evals: list[dict]) -> int | None:
    """Evals run at epoch ends (epoch e ends at step (e + 1) x steps per epoch)."""
    for e in evals:
        if e.get("step") and (e["step"] % (e["epoch"] + 1)) == 0:
            return e["step"] // (e["epoch"] + 1)
    return None


def newest_checkpoint(run_dir: Path) -> tuple[str, int, float] | None:
    """(name, step, age in seconds) of the newest complete checkpoint."""
    for p in list_step_dirs(run_dir / "checkpoints"):  # newest first
        if invalid_reason(p) is None:
            return p.name, step_of(p), time.time() - (p / MARKER).stat().st_mtime
    return None


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def slurm_job(run_dir: Path) -> tuple[str | None, str, int | None]:
    """(job id, state, requeue count) from launch.json + scontrol / sacct / the task logs."""
    launch = read_launch(run_dir)
    job_id = launch.get("job_id")
    if not job_id:
        return None, "no SLURM job recorded" if not (run_dir / "FINISHED").is_file() else "FINISHED", None
    state, restarts = "", None
    out = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if m := re.search(r"\bJobState=(\S+)", out):
        state = m.group(1)
        if r := re.search(r"\bRestarts=(\d+)", out):
            restarts = int(r.group(1))
    if not state:
        out = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"])
        state = out.split("\n", 1)[0].strip().split(" ")[0] if out.strip() else ""
    if restarts is None:  # the launcher logs "job <id> restart <n>" at each start
        logs = [Path(p) for p in (launch.get("stdout"), launch.get("stderr")) if p]
        counts = [
            int(n)
            for p in logs
            if p.is_file()
            for n in re.findall(r"job \S+ restart (\d+)", p.read_text(errors="replace"))
        ]
        restarts = max(counts) if counts else None
    if not state:
        state = "FINISHED" if (run_dir / "FINISHED").is_file() else "unknown (no scontrol/sacct answer)"
    elif (run_dir / "FINISHED").is_file():
        state += ", FINISHED"
    return str(job_id), state, restarts


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    return (f"{d}d " if d else "") + f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def run_status(run_dir: str | Path, reference: str | None = None) -> dict[str, str]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StatusError(
            f"run dir {str(run_dir)!r} does not exist; pass the run.dir of a run (launch/slurm.py prints it)"
        )
    cfg = read_config(run_dir)
    if not cfg and not (run_dir / METRICS_FILE).is_file() and not read_launch(run_dir):
        raise StatusError(f"{str(run_dir)!r} is not a run dir (no config.yaml, metrics.jsonl or launch.json)")
    train, evals = read_metrics(run_dir)
    job_id, state, restarts = slurm_job(run_dir)
    o = cfg.get("optim", {})
    epochs = int(o.get("epochs", 0)) + int(o.get("cooldown_epochs", 0) or 0)
    spe = steps_per_epoch(cfg, train) or steps_per_epoch_from_evals(evals)
    total = spe * epochs if spe and epochs else None
    last = train[-1] if train else {}
    step = max([r["step"] for r in train + evals], default=0)
    row: dict[str, str] = {"run": str(run_dir)}
    row["job"] = f"{job_id or '-'} {state}"
    row["requeues"] = "-" if restarts is None else str(restarts)
    row["step"] = f"{step}/{total}" if total else str(step)
    done_epochs = (evals[-1]["epoch"] + 1) if evals else (last.get("epoch", 0) if train else 0)
    row["epoch"] = f"{done_epochs}/{epochs}" if epochs else str(done_epochs)
    rates = [r["img_per_s"] for r in train[-5:] if r.get("img_per_s")]
    rate = sum(rates) / len(rates) if rates else None
    row["img/s"] = f"{rate:.1f}" if rate else "-"
    gb = cfg.get("derived", {}).get("global_batch")
    if (run_dir / "FINISHED").is_file() or (total and step >= total):
        row["eta"] = "done"
    elif rate and gb and total:
        row["eta"] = _hms((total - step) * gb / rate)
    else:
        row["eta"] = "-"
    if evals:
        e = evals[-1]
        row["last eval"] = (
            f"epoch {e['epoch']}: top1 {_pct(e.get('eval/top1'))} top5 {_pct(e.get('eval/top5'))}"
            f" | EMA top1 {_pct(e.get('eval_ema/top1'))} top5 {_pct(e.get('eval_ema/top5'))}"
        )
    else:
        row["last eval"] = "-"
    ck = newest_checkpoint(run_dir)
    row["checkpoint"] = f"{ck[0]} ({_hms(ck[2])} ago)" if ck else "none complete"
    row["skipped"] = (
        f"{last.get('bad_steps', 0)} bad, {last.get('overflow_steps', 0)} overflow" if train else "-"
    )
    ref = reference or cfg.get("run", {}).get("reference")
    if ref and evals:
        e = evals[-1]
        try:
            paper = official.at_epoch(ref, int(e["epoch"]), "test_acc1")
        except KeyError as err:
            raise StatusError(str(err.args[0])) from None
        row["vs paper"] = (
            f"{ref} epoch {e['epoch']}: {_pct(paper)}, gap {e['eval/top1'] - paper:+.2f}"
            if paper is not None and e.get("eval/top1") is not None
            else f"{ref} has no epoch {e['epoch']}"
        )
    else:
        row["vs paper"] = f"{ref}: no eval yet" if ref else "- (no run.reference; pass --reference NAME)"
    return row


def format_rows(rows: list[dict[str, str]]) -> str:
    if len(rows) == 1:
        w = max(len(k) for k in rows[0])
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows[0].items())
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(f"{k:<{widths[k]}}" for k in keys)]
    lines += ["  ".join(f"{r[k]:<{widths[k]}}" for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rmt_dist.status",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run.dir of one or more runs (e.g. a sweep's)"
    )
    p.add_argument(
        "--reference",
        choices=official.names(),
        default=None,
        help="the paper's run to compare with (default: each run's run.reference)",
    )
    a = p.parse_args(argv)
    try:
        rows = [run_status(d, a.reference) for d in a.run_dirs]
    except StatusError as e:
        return report(e)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
