"""The Python stages of bench/gpu_check.sh: environment and matmul peak, CUDA test results
as JSON, the device RandAugment timing, and the merge of every stage into OUT_DIR.

    python bench/gpu_check.py env OUT/env.json [--device cpu]
    python bench/gpu_check.py tests OUT/cuda_tests.json PARTS [--budget S]
    python bench/gpu_check.py precompile PARTS --models rmt_t,rmt_l [--budget S] -- TRAIN_STEP_ARGS...
        (one bench/train_step.py fast step per model, in parallel processes)
    python bench/gpu_check.py randaugment OUT/randaugment_device.json [--device cpu --batch 4 --size 64]
    python bench/gpu_check.py collect OUT PARTS

Each writes its JSON itself (atomically), so a stage stopped by its time limit leaves the
files of the stages before it intact. Needs only what the GPU machine has (torch, timm,
numba, numpy, scikit-learn); nothing here imports ffcv, deepspeed or submitit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ABSENT_ON_GPU_MACHINE = ("ffcv", "deepspeed", "submitit")
TRAIN_ROW_KEYS = ("model", "path", "img_per_s", "ms_per_step", "mfu", "peak_mem_gib")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def end_groups_on_sigterm(procs: list[subprocess.Popen]) -> None:
    """The stage's `timeout` signals this process only; the children run in their own sessions
    (so a deadline can end their whole trees), so end those trees too."""

    def handler(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(124)

    signal.signal(signal.SIGTERM, handler)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


# ---- env ------------------------------------------------------------------------------------

DISTRIBUTIONS = {
    "triton": "triton",
    "timm": "timm",
    "numpy": "numpy",
    "numba": "numba",
    "opencv": "opencv-python-headless",
    "scikit-learn": "scikit-learn",
    "einops": "einops",
}


def _version(distribution: str) -> str | None:
    """Installed version without importing it (imports of numba, cv2, sklearn cost seconds)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict:
    try:
        out = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    name, driver, memory = (part.strip() for part in out[0].split(","))
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


def matmul_peak_tflops(
    device: str, n: int, dtype_name: str = "bfloat16", rounds: int = 3, reps: int = 10
) -> float:
    """Best round's mean TFLOP/s of n x n x n products (three warm-ups first): the attainable
    peak MFU is quoted against (KINDS.md measured ~790 on an H200 this way)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best / 1e12


def env_info(device: str) -> dict:
    import torch

    info = {
        "gpu": None,
        "driver": None,
        "gpu_memory": None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{key: _version(dist) for key, dist in DISTRIBUTIONS.items()},
        **{f"has_{m}": importlib.util.find_spec(m) is not None for m in ABSENT_ON_GPU_MACHINE},
        "device": device,
    }
    if device.startswith("cuda"):
        info.update({k: v for k, v in nvidia_smi().items() if v})
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = info["gpu"] or props.name
        info.update(
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=props.total_memory / 2**30,
        )
        n = 8192
    else:
        info["gpu"] = f"none: CPU dry run ({platform.processor() or platform.machine()})"
        n = 256
    info["bf16_matmul_n"] = n
    info["bf16_matmul_tflops"] = matmul_peak_tflops(device, n)
    return info


# ---- CUDA tests -----------------------------------------------------------------------------


def _absent_module(message: str) -> str | None:
    for name in ABSENT_ON_GPU_MACHINE:
        if f"No module named '{name}" in message or f"blocked: {name}" in message:
            return name
    return None


def junit_results(junit: Path) -> list[dict]:
    """One entry per test case; a module whose collection fails only because it imports a
    package this machine lacks (ffcv, deepspeed, submitit) is a skip, not a failure."""
    results = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        if outcome == "error" and (missing := _absent_module(message)):
            outcome, message = "skipped", f"module needs {missing}, which this machine lacks"
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        results.append(
            {
                "test": name,
                "outcome": outcome,
                "seconds": float(case.get("time") or 0),
                "message": message.strip()[:2000],
            }
        )
    return results


VERBOSE_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def verbose_results(output: str) -> list[dict]:
    """Per-test outcomes from `pytest -v` output: what is left when pytest was stopped before
    writing its junit XML."""
    results = []
    for line in output.splitlines():
        if m := VERBOSE_LINE.match(line):
            results.append(
                {
                    "test": m[1],
                    "outcome": m[2].lower().replace("xpass", "passed").replace("xfail", "skipped"),
                    "seconds": None,
                    "message": "from pytest -v output (no junit XML)",
                }
            )
    return results


def tests_json(junit: Path, rc: int, output: str = "", timed_out: bool = False) -> dict:
    results = junit_results(junit) if junit.exists() else verbose_results(output)
    summary = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "error", "skipped")}
    return {
        "pytest_rc": rc,
        "timed_out": timed_out,
        "junit_found": junit.exists(),
        "summary": summary,
        "tests": results,
    }


def cuda_test_files(tests_dir: Path = Path("tests")) -> list[Path]:
    """Test modules that skip without CUDA: where the CUDA-only tests live."""
    return sorted(p for p in tests_dir.glob("test_*.py") if "cuda.is_available()" in p.read_text())


def run_cuda_tests(out: Path, parts: Path, budget: float, per_test_s: int = 150) -> int:
    """pytest -k cuda over cuda_test_files(), stopped `budget` s in; JSON either way."""
    junit = parts / "cuda_tests.xml"
    junit.unlink(missing_ok=True)
    files = [str(p) for p in cuda_test_files()]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-v",
        "-rfEs",
        "-k",
        "cuda",
        "--continue-on-collection-errors",
        f"--junitxml={junit}",
        *files,
    ]
    if importlib.util.find_spec("pytest_timeout"):
        cmd.insert(5, f"--timeout={per_test_s}")
    print("CUDA tests:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    end_groups_on_sigterm([proc])
    lines: list[str] = []
    deadline = time.monotonic() + budget
    timed_out = False

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=5)
    rc = 124 if timed_out else proc.returncode
    result = tests_json(junit, rc, "".join(lines), timed_out)
    write_json(out, result)
    print(f"CUDA tests: {result['summary']} (pytest rc {rc}{', stopped at the budget' if timed_out else ''})")
    return stage_status(result)


def stage_status(result: dict) -> int:
    """The stage's exit status: 0 when nothing failed. pytest's own 1 also covers a module
    skipped for a package this machine lacks, and 5 a run where every test was skipped."""
    summary, rc = result["summary"], result["pytest_rc"]
    if result["timed_out"]:
        return 124
    if summary["failed"] or summary["error"]:
        return rc or 1
    return 0 if rc in (0, 1, 5) else rc


# ---- device RandAugment ---------------------------------------------------------------------


def sample_batch(batch: int, size: int, seed: int = 0):
    """uint8 (batch, size, size, 3) crops of scikit-learn's two sample photos."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(batch):
        src = photos[k % 2]
        top, left = rng.integers(0, src.shape[0] - size), rng.integers(0, src.shape[1] - size)
        crops.append(src[top : top + size, left : left + size])
    return np.ascontiguousarray(np.stack(crops))


def time_randaugment(device: str, batch: int, size: int, batches: int, spec: str) -> dict:
    """ms per batch of rand_augment_on_device (the loader's device stage, RandAugment part),
    fresh ops per batch as in training, for bicubic and bilinear resampling."""
    import numpy as np
    import torch

    from rmt_dist.data import randaugment as R
    from rmt_dist.data.device_randaugment import rand_augment_on_device

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    host = torch.from_numpy(sample_batch(batch, size))
    fill = R.fill_color((0.485, 0.456, 0.406))
    parsed = R.RandAugmentSpec.parse(spec)
    rng = np.random.default_rng(0)
    result = {"device": device, "batch": batch, "size": size, "spec": spec, "batches": batches}
    for bicubic in (True, False):
        ms = []
        for k in range(batches + 1):  # the first is a warm-up
            ops, args = R.sample_ops(rng, batch, parsed)
            images = host.to(device)
            sync()
            start = time.perf_counter()
            rand_augment_on_device(images, ops, args, fill, bicubic)
            sync()
            if k:
                ms.append(1000 * (time.perf_counter() - start))
        ms.sort()
        result["bicubic" if bicubic else "bilinear"] = {
            "ms_per_batch_median": ms[len(ms) // 2],
            "ms_per_batch_min": ms[0],
            "ms_per_batch_max": ms[-1],
            "img_per_s": batch / (ms[len(ms) // 2] / 1000),
        }
    if cuda:
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


# ---- precompile ---------------------------------------------------------------------------


def precompile(parts: Path, models: list[str], budget: float, train_args: list[str]) -> int:
    """One fast-path step of each model, in parallel processes: fills the inductor cache, so
    the timed runs that follow compile from it. Each process writes precompile_MODEL.json;
    its warm-up time is that model's cold compile (plus one step)."""
    env = {
        **os.environ,
        "TORCHINDUCTOR_COMPILE_THREADS": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", "4"),
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    procs = {}
    for model in models:
        log = open(parts / f"precompile_{model}.log", "w")  # noqa: SIM115  (closed below)
        cmd = [
            sys.executable,
            "bench/train_step.py",
            *train_args,
            "--models",
            model,
            "--paths",
            "fast",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--json",
            str(parts / f"precompile_{model}.json"),
        ]
        procs[model] = (
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True),
            log,
        )
    end_groups_on_sigterm([proc for proc, _ in procs.values()])
    deadline = time.monotonic() + budget
    rc = 0
    for model, (proc, log) in procs.items():
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = 124
        log.close()
        tail = (parts / f"precompile_{model}.log").read_text().splitlines()[-2:]
        print(f"precompile {model}: rc {code}; " + " | ".join(tail)[-400:], flush=True)
        rc = rc or code
    return rc


# ---- collect --------------------------------------------------------------------------------


def read_stages(parts: Path) -> list[dict]:
    stages = []
    path = parts / "stages.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, budget, rc, wall = line.split("\t")
        rc_i = int(rc) if rc.lstrip("-").isdigit() else None
        stages.append(
            {
                "stage": name,
                "budget_s": int(budget),
                "rc": rc_i,
                "wall_s": int(wall),
                "status": "skipped: out of time"
                if rc == "skipped"
                else "not selected (GPU_CHECK_ONLY)"
                if rc == "not-selected"
                else "timed out"
                if rc_i in (124, 137)
                else "ok"
                if rc_i == 0
                else f"failed (rc {rc})",
            }
        )
    return stages


def targets(rows: list[dict]) -> dict:
    """Issue 18's targets, read off the rows (None where a row is missing)."""
    ok = {(r["model"], r["path"]): r for r in rows if r.get("status", "ok") == "ok"}

    def ratio(model: str) -> float | None:
        fast, ref = ok.get((model, "fast")), ok.get((model, "reference"))
        return fast["img_per_s"] / ref["img_per_s"] if fast and ref else None

    l_fast = ok.get(("rmt_l", "fast"))
    speedups = {m: ratio(m) for m in ("rmt_t", "rmt_s", "rmt_b", "rmt_l")}
    return {
        "fast_vs_reference": speedups,
        "rmt_l_fast_2x_reference": None if speedups["rmt_l"] is None else speedups["rmt_l"] >= 2,
        "rmt_l_fast_mfu_25pct": None if not l_fast or l_fast.get("mfu") is None else l_fast["mfu"] >= 0.25,
        "no_regression_t_s_b": {
            m: None if speedups[m] is None else speedups[m] >= 1.0 for m in ("rmt_t", "rmt_s", "rmt_b")
        },
    }


def collect(out: Path, parts: Path, models: list[str]) -> dict:
    """OUT/h200_train_step.json and OUT/stages.json from what the stages left so far."""
    env = read_json(out / "env.json", {}) or {}
    rows = []
    for model in models:
        for row in read_json(parts / f"train_{model}.json", []) or []:
            rows.append({**{k: row.get(k) for k in TRAIN_ROW_KEYS}, **row})
    precompile = [
        {k: row.get(k) for k in ("model", "status", "warmup_s", "graphs", "compile")}
        for model in models
        for row in read_json(parts / f"precompile_{model}.json", []) or []
    ]
    train = {
        "gpu": env.get("gpu"),
        "driver": env.get("driver"),
        "torch": env.get("torch"),
        "peak_bf16_tflops": env.get("bf16_matmul_tflops"),
        "mfu_counts": "6 x the released code's MACs per image (19.55 G for RMT-L) x img/s / peak_bf16_tflops",
        "rows": rows,
        "cold_compile": precompile,
        "targets": targets(rows),
    }
    write_json(out / "h200_train_step.json", train)
    write_json(out / "stages.json", {"stages": read_stages(parts)})
    return train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    # A stage's default time: its budget in gpu_check.sh (exported) less a margin for the JSON.
    budget = float(os.environ.get("GPU_CHECK_STAGE_BUDGET", 170)) - 10
    e = sub.add_parser("env", help="GPU, driver, versions and the measured bf16 matmul peak")
    e.add_argument("out", type=Path)
    e.add_argument("--device", default="cuda")
    t = sub.add_parser("tests", help="the CUDA tests, as JSON (modules needing ffcv & co. count as skipped)")
    t.add_argument("out", type=Path)
    t.add_argument("parts", type=Path, help="scratch folder (junit XML)")
    t.add_argument("--budget", type=float, default=budget, help="stop pytest after this many s")
    pc = sub.add_parser(
        "precompile",
        help="one fast step per model in parallel (fills the inductor cache); "
        "bench/train_step.py's arguments follow a --",
    )
    pc.add_argument("parts", type=Path)
    pc.add_argument("--models", required=True)
    pc.add_argument("--budget", type=float, default=budget)
    r = sub.add_parser("randaugment", help="ms per batch of the device RandAugment stage")
    r.add_argument("out", type=Path)
    r.add_argument("--device", default="cuda")
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--size", type=int, default=224)
    r.add_argument("--batches", type=int, default=10)
    r.add_argument("--spec", default="rand-m9-mstd0.5-inc1")
    c = sub.add_parser("collect", help="merge the stages' outputs into OUT's JSON files")
    c.add_argument("out", type=Path)
    c.add_argument("parts", type=Path)
    c.add_argument("--models", default="rmt_t,rmt_s,rmt_b,rmt_l")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this command's arguments, bench/train_step.py's arguments after a `--`)."""
    if "--" in argv:
        cut = argv.index("--")
        return build_parser().parse_args(argv[:cut]), argv[cut + 1 :]
    return build_parser().parse_args(argv), []


def main(argv: list[str] | None = None) -> int:
    a, train_args = parse(sys.argv[1:] if argv is None else argv)
    if a.cmd == "env":
        info = env_info(a.device)
        write_json(a.out, info)
        print(json.dumps(info, indent=1))
    elif a.cmd == "tests":
        return run_cuda_tests(a.out, a.parts, a.budget)
    elif a.cmd == "precompile":
        return precompile(a.parts, a.models.split(","), a.budget, train_args)
    elif a.cmd == "randaugment":
        result = time_randaugment(a.device, a.batch, a.size, a.batches, a.spec)
        write_json(a.out, result)
        print(json.dumps(result, indent=1))
    else:
        collect(a.out, a.parts, a.models.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
