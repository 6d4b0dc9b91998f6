"""What the GPU machine runs imports without ffcv, deepspeed and submitit, from the source tree.

The GPU machine (bench/gpu_check.sh) has its own python3 and torch but none of those three
packages, and runs the tree with PYTHONPATH=. and no install. A subprocess here gets a
meta-path finder that refuses them (installed or not) and refuses rmt-dist's installed
metadata, then imports the model code, the benches and the CUDA test modules and runs
the smallest model once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("ffcv", "deepspeed", "submitit")

PRELUDE = textwrap.dedent(
    """
    import importlib.metadata, sys

    ABSENT = {absent!r}

    class RefuseAbsent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ABSENT:
                raise ImportError(f"{{name}} is not on the GPU machine (blocked by the test)")
            return None

    sys.meta_path.insert(0, RefuseAbsent())
    for name in ABSENT:
        sys.modules.pop(name, None)

    def no_installed_rmt_dist(real):
        def lookup(name, *args, **kwargs):
            if name.replace("_", "-").lower() == "rmt-dist":
                raise importlib.metadata.PackageNotFoundError(name)
            return real(name, *args, **kwargs)
        return lookup

    importlib.metadata.version = no_installed_rmt_dist(importlib.metadata.version)
    importlib.metadata.distribution = no_installed_rmt_dist(importlib.metadata.distribution)
    """
)

CHECKS = textwrap.dedent(
    """
    import importlib.util
    from pathlib import Path

    for name in ABSENT:  # the finder works: the imports below ran without these
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} imported despite the block")

    import rmt_dist
    import rmt_dist.models
    assert Path(rmt_dist.__file__).resolve().is_relative_to(Path.cwd().resolve()), rmt_dist.__file__

    sys.path.insert(0, "tests")  # as pytest's rootdir-relative import puts it
    for i, path in enumerate(FILES):
        spec = importlib.util.spec_from_file_location(f"gpu_file_{i}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)

    import timm
    import torch

    model = timm.create_model("rmt_test", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ABSENT)
    assert not loaded, loaded
    print("imports ok")
    """
)

FILES = [
    "bench/train_step.py",
    "bench/model.py",
    "bench/gpu_check.py",
    "tests/test_models_masa.py",
    "tests/test_data_device_randaugment.py",
]


def run_blocked(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ".", "OMP_NUM_THREADS": "1"}
    script = PRELUDE.format(absent=ABSENT) + f"FILES = {FILES!r}\n" + code
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_gpu_machine_code_imports_without_ffcv_deepspeed_submitit() -> None:
    proc = run_blocked(CHECKS)
    assert proc.returncode == 0 and "imports ok" in proc.stdout, proc.stderr[-3000:]


def test_the_block_refuses_the_absent_packages() -> None:
    # The finder must bite, or the test above proves nothing.
    proc = run_blocked("import ffcv\n")
    assert proc.returncode != 0 and "not on the GPU machine" in proc.stderr
