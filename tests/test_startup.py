"""Commands a user types on a login node start without torch (issue 17): no torch, timm or
models import for `import rmt_dist`, the config tools, every `--help` and the launcher's dry
run; and the numpy-only beton fingerprint equals the one ffcv's own Reader gives."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import digits_betons

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]"
# Runs the target (a module or a script) like `python -m` / `python script`, then checks.
RUNNER = f"""
import runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
try:
    if target.endswith('.py'):
        runpy.run_path(target, run_name='__main__')
    else:
        runpy.run_module(target, run_name='__main__', alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
{PROBE}
print('exit', code)
"""


def _bench_helps() -> list[str]:
    """The modules bench/startup.py times (one list for the bench and this test)."""
    spec = importlib.util.spec_from_file_location("bench_startup", ROOT / "bench" / "startup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HELPS


# The bench's --help modules, plus the digits helper and the two launchers (the bench times those with other arguments).
COMMANDS = [*_bench_helps(), "rmt_dist.data.digits", "launch/slurm.py", "launch/local.py"]


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "module",
    [
        "rmt_dist",
        "rmt_dist.config",
        "rmt_dist.data",
        "rmt_dist.tokenlabel",
        "rmt_dist.launching.preflight",
        "rmt_dist.data.meta",
    ],
)
def test_imports_do_not_import_torch(module):
    r = _python("-c", f"import {module}; {PROBE}")
    assert r.returncode == 0, r.stderr[-2000:]


def test_every_help_answers_without_torch():
    for target in COMMANDS:
        r = _python("-c", RUNNER, target, "--help")
        assert r.returncode == 0 and "exit 0" in r.stdout, f"{target} --help: {r.stderr[-2000:]}"
        assert "usage" in r.stdout.lower(), target


def test_config_print_and_slurm_dry_run_without_torch():
    r = _python("-c", RUNNER, "rmt_dist.config", "recipes/rmt_l.yaml")
    assert r.returncode == 0 and "exit 0" in r.stdout, r.stderr[-2000:]
    assert "model:" in r.stdout
    # The dry run reports (a missing ImageNet beton is "would fail", then exit 2), it imports no torch.
    r = _python("-c", RUNNER, "launch/slurm.py", "recipes/rmt_l.yaml", "--dry-run")
    code = 0 if "pre-flight: every check ok" in r.stdout else 2
    assert r.returncode == 0 and f"exit {code}" in r.stdout, r.stderr[-2000:]
    assert "would fail" in r.stdout or "ok " in r.stdout


def test_dry_run_on_real_betons_fingerprints_them_without_torch(tmp_path_factory, tmp_path):
    train, val = digits_betons(tmp_path_factory.getbasetemp())
    r = _python(
        "-c",
        RUNNER,
        "launch/slurm.py",
        "recipes/smoke.yaml",
        f"data.train={train}",
        f"data.val={val}",
        f"run.dir={tmp_path / 'run'}",
        "--dry-run",
    )
    assert r.returncode == 0 and "exit 0" in r.stdout, r.stderr[-2000:]
    assert f"ok          data.train: {train}" in r.stdout, r.stdout


def test_models_register_with_timm_on_import_rmt_dist_models():
    r = _python(
        "-c",
        "import timm, rmt_dist; assert 'rmt_s' not in timm.list_models('rmt_*');"
        "import rmt_dist.models; assert 'rmt_s' in timm.list_models('rmt_*')",
    )
    assert r.returncode == 0, r.stderr[-2000:]


def _reader_fingerprint(path: str) -> str:
    """The fingerprint as rmt-dist computed it with ffcv's Reader before issue 17."""
    from ffcv.reader import Reader

    reader = Reader(path)
    metadata_end = reader.header.nbytes + reader.field_descriptors.nbytes + reader.metadata.nbytes
    table = reader.alloc_table
    h = hashlib.sha256()
    h.update(f"size={os.path.getsize(path)};samples={reader.num_samples};".encode())
    with open(path, "rb") as f:
        h.update(f.read(metadata_end))
        h.update(table.tobytes())
        for row in np.linspace(0, len(table) - 1, min(64, len(table))).astype(np.int64):
            f.seek(int(table["ptr"][row]))
            h.update(f.read(int(min(table["size"][row], 1 << 16))))
    return "sha256:" + h.hexdigest()


def test_numpy_fingerprint_equals_ffcv_readers(tmp_path_factory):
    from rmt_dist.data.meta import beton_fingerprint

    for beton in digits_betons(tmp_path_factory.getbasetemp()):
        assert beton_fingerprint(beton) == _reader_fingerprint(str(beton)), beton
