"""Acceptance for the README's first command: the demo, shortened (same stages, fewer steps)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_every_stage_end_to_end_and_reuses_them(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "rmt_dist.demo", "--quick", "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for stage in range(1, 6):
        assert f"[{stage}/5]" in p.stdout
    assert (out / "data/train.beton").is_file() and (out / "data/val.beton").is_file()
    meta = json.loads((out / "data/train.tokenlabel/meta.json").read_text())
    assert meta["complete"] and meta["teacher"] == "rmt_test" and (meta["map_h"], meta["map_w"]) == (2, 2)
    for run in ("teacher", "student"):
        assert (out / run / "FINISHED").is_file()
        assert list((out / run / "tb").glob("events.out.tfevents.*"))
        assert (out / run / "checkpoints/latest").is_file()
        evals = [
            json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines() if "eval/top1" in x
        ]
        assert len(evals) == 2 and "eval_ema/top1" in evals[-1]
    student_cfg = (out / "student/config.yaml").read_text()
    assert "token_label: true" in student_cfg and "mix_token: true" in student_cfg
    table = p.stdout[p.stdout.index("[5/5]") :]
    for row in ("teacher (RMT)", "teacher EMA", "student (RMT*, token labels)", "student EMA", "tensorboard"):
        assert row in table
    # a second run reuses every finished stage
    t = time.time()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing it") == 3
    assert time.time() - t < 120
