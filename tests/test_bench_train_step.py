"""bench/train_step.py and bench/gpu_check.sh on CPU: what a GPU session will run is well formed.

The GPU session itself cannot run here; `bash bench/gpu_check.sh OUT --cpu-dry-run` runs
every stage at tiny size (1-2 min). These tests cover its parts: the shell calls each
stage with arguments the stages' parsers accept (a stub interpreter records them), and
the stages' Python (graph counts, per-row JSON, profile, test results, merge) works."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "train_step.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    yield _load("bench_train_step", BENCH)
    del sys.modules["bench_train_step"]


@pytest.fixture(scope="module")
def gpu_check():
    yield _load("bench_gpu_check", ROOT / "bench" / "gpu_check.py")
    del sys.modules["bench_gpu_check"]


@pytest.fixture
def one_thread():
    # Two OpenMP threads on a shared 2-core machine run tiny models ~30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reference_and_fast_rows_with_positive_numbers(bench, one_thread) -> None:
    args = bench.parse_args(
        [
            "--device",
            "cpu",
            "--models",
            "rmt_test",
            "--img-size",
            "64",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
        ]
    )
    assert args.compile == "none" and args.precision == "fp32"  # CPU defaults
    rows, header = bench.run(args)
    assert [(r.model, r.path, r.status) for r in rows] == [
        ("rmt_test", "reference", "ok"),
        ("rmt_test", "fast", "ok"),
    ]
    for r in rows:
        assert r.img_per_s > 0 and r.ms_per_step > 0 and r.mfu > 0
        assert r.peak_mem_gib is None  # CPU: no allocator peak
    table = bench.format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| model | path | img/s |") and len(lines) == 4
    assert lines[2].startswith("| rmt_test | reference |") and lines[3].startswith("| rmt_test | fast |")
    assert lines[3].rstrip(" |").endswith("x")  # fast / reference ratio
    assert "TFLOP/s" in header and "attn_impl=reference" in header


def test_out_of_memory_marks_the_row_and_the_run_goes_on(bench, monkeypatch) -> None:
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(bench, "measure", oom)
    args = bench.parse_args(["--device", "cpu", "--models", "rmt_test,rmt_t", "--peak-tflops", "1"])
    rows, _ = bench.run(args)
    assert [r.status for r in rows] == ["OOM"] * 4
    assert bench.format_table(rows).count("| OOM |") == 4


def test_known_macs_at_224_and_counted_otherwise(bench) -> None:
    assert bench.macs_per_image("rmt_l", 224) == 19.55e9
    assert 0 < bench.macs_per_image("rmt_test", 64) < 1e8


def test_shared_blocks_compiles_one_graph_per_stage_where_blocks_compiles_one_per_block(bench) -> None:
    # RMT-T's 14 blocks have 13 distinct drop-path rates: per-block compile makes a graph for
    # every block (each an inductor compile on a GPU), shared-blocks one per stage.
    # (64 px: at 32 px stage 4's 1x1 grid adds a graph for its size-1 strides.)
    args = bench.parse_args(["--device", "cpu", "--models", "rmt_t", "--img-size", "64", "--count-graphs"])
    counts = {r["compile"]: r for r in bench.count_graphs(args, modes=("blocks", "shared-blocks"), steps=2)}
    assert counts["blocks"]["graphs"] == counts["blocks"]["blocks"] == 14
    assert counts["shared-blocks"]["graphs_after_steps"] == [4, 4]  # and no recompile on step 2


def test_stochastic_depth_drops_whole_samples_and_rescales_like_timm(bench) -> None:
    torch.manual_seed(0)
    layer = bench.StochasticDepth(0.25).train()
    x = torch.ones(4000, 2, 3)
    out = layer(x)
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one draw per sample
    kept = per_sample[:, 0] != 0
    assert torch.allclose(per_sample[kept, 0], torch.tensor(1 / 0.75))  # 1/keep, as timm
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert torch.equal(layer.eval()(x), x)
    assert "keep_prob" not in layer.state_dict()  # checkpoints stay the model's own


def test_rows_reach_the_json_file_after_every_row(bench, monkeypatch, tmp_path) -> None:
    out = tmp_path / "rows.json"
    seen_before_second = []

    def fake(name, path, *args):
        if path == "fast":  # the reference row must already be on disk
            seen_before_second.append(json.loads(out.read_text()))
        return bench.Row(name, path, img_per_s=1.0, ms_per_step=1.0)

    monkeypatch.setattr(bench, "measure", fake)
    args = bench.parse_args(
        ["--device", "cpu", "--models", "rmt_test", "--peak-tflops", "1", "--json", str(out)]
    )
    bench.run(args)
    assert [r["path"] for r in seen_before_second[0]] == ["reference"]
    assert [r["path"] for r in json.loads(out.read_text())] == ["reference", "fast"]


def test_profile_lists_the_costliest_operators_per_step(bench, one_thread) -> None:
    a = torch.randn(256, 256)

    def step():
        for _ in range(4):
            a @ a
        a.sin()

    result = bench.profile_top(step, torch.device("cpu"), steps=2, top=3)
    assert len(result["top"]) == 3 and result["top"][0]["name"] == "aten::mm"
    assert result["top"][0]["calls_per_step"] == 4
    shares = [r["share"] for r in result["top"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001


# ---- bench/gpu_check.sh ----------------------------------------------------------------------

STUB = """#!/usr/bin/env bash
# Records each call, one argument a line, in a file of its own (stages run concurrently, and
# appends to one file interleaved); runs only the merge step for real.
printf '%s\\n' "$@" > "$(mktemp -p "$CALLS" call.XXXXXX)"
if [[ "$1" == bench/gpu_check.py && "$2" == collect ]]; then exec "$REAL_PYTHON" "$@"; fi
"""


def _calls(path: Path) -> list[list[str]]:
    return [f.read_text().splitlines() for f in sorted(path.iterdir())]


@pytest.mark.parametrize("dry", [False, True], ids=["gpu", "cpu-dry-run"])
def test_gpu_check_sh_runs_every_stage_with_arguments_the_stages_accept(bench, gpu_check, tmp_path, dry):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    calls, out = tmp_path / "calls", tmp_path / "out"
    calls.mkdir()
    env = {
        **os.environ,
        "PYTHON": str(stub),
        "CALLS": str(calls),
        "REAL_PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
    }
    cmd = ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)] + (["--cpu-dry-run"] if dry else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    models = ["rmt_test"] if dry else ["rmt_t", "rmt_s", "rmt_b", "rmt_l"]
    stages = json.loads((out / "stages.json").read_text())["stages"]
    expected = {"env", "precompile", "cuda_tests", "randaugment", *(f"train_{m}" for m in models)}
    assert {s["stage"] for s in stages} == expected and all(s["status"] == "ok" for s in stages)
    assert (
        sum(s["budget_s"] for s in stages if s["stage"] != "cuda_tests") <= 520
    )  # cuda_tests runs alongside
    trained, profiled = [], []
    for call in _calls(calls):
        script, args = call[0], call[1:]
        if script == "bench/train_step.py":
            a = bench.parse_args(args)
            trained.append((tuple(a.models), tuple(a.paths)))
            assert (a.device, a.precision, a.compile) == (
                ("cpu", "bf16", "shared-blocks") if dry else ("cuda", "bf16", "shared-blocks")
            )
            assert a.batch_size == (2 if dry else 128) and a.img_size == (64 if dry else 224)
            if a.profile:
                profiled.append(a.profile_models)
        elif script == "bench/gpu_check.py":
            a, train_args = gpu_check.parse(args)
            if a.cmd == "precompile":
                assert a.models.split(",") == models
                assert bench.parse_args(train_args).compile == "shared-blocks"
        else:
            assert script == "-c", call  # reading the peak out of env.json
    assert sorted(trained) == sorted(((m,), ("reference", "fast")) for m in models)
    assert profiled == [["rmt_test" if dry else "rmt_l"]]
    train = json.loads((out / "h200_train_step.json").read_text())
    assert {"gpu", "driver", "torch", "rows"} <= set(train)


def test_gpu_check_only_reruns_the_named_stages(tmp_path):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = {
        **os.environ,
        "PYTHON": str(stub),
        "CALLS": str((tmp_path / "calls").mkdir() or tmp_path / "calls"),
        "REAL_PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
        "GPU_CHECK_ONLY": "train_rmt_l",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads((tmp_path / "out" / "stages.json").read_text())["stages"]
    assert [s["stage"] for s in stages if s["status"] == "ok"] == ["train_rmt_l"]
    assert len(stages) == 8


def test_bad_arguments_exit_2_with_a_one_line_reason(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path), "--gpu"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "unknown option --gpu" in proc.stderr
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_collect_writes_the_issue_shape_and_reads_the_targets(gpu_check, tmp_path):
    out, parts = tmp_path / "out", tmp_path / "parts"
    gpu_check.write_json(
        out / "env.json",
        {"gpu": "NVIDIA H200", "driver": "580.1", "torch": "2.11.0", "bf16_matmul_tflops": 790.0},
    )
    rows = [
        {
            "model": "rmt_l",
            "path": "reference",
            "status": "ok",
            "img_per_s": 700.0,
            "ms_per_step": 182.9,
            "mfu": 0.10,
            "peak_mem_gib": 60.0,
        },
        {
            "model": "rmt_l",
            "path": "fast",
            "status": "ok",
            "img_per_s": 1500.0,
            "ms_per_step": 85.3,
            "mfu": 0.22,
            "peak_mem_gib": 40.0,
            "graphs": 6,
        },
    ]
    gpu_check.write_json(parts / "train_rmt_l.json", rows)
    gpu_check.write_json(
        parts / "train_rmt_t.json", [{"model": "rmt_t", "path": "reference", "status": "OOM"}]
    )
    (parts / "stages.tsv").write_text(
        "env\t30\t0\t7\ntrain_rmt_l\t120\t124\t120\nrandaugment\t35\tskipped\t0\n"
    )
    gpu_check.collect(out, parts, ["rmt_t", "rmt_s", "rmt_b", "rmt_l"])
    train = json.loads((out / "h200_train_step.json").read_text())
    assert (train["gpu"], train["driver"], train["torch"]) == ("NVIDIA H200", "580.1", "2.11.0")
    assert [(r["model"], r["path"]) for r in train["rows"]] == [
        ("rmt_t", "reference"),
        ("rmt_l", "reference"),
        ("rmt_l", "fast"),
    ]
    assert list(train["rows"][2])[:6] == ["model", "path", "img_per_s", "ms_per_step", "mfu", "peak_mem_gib"]
    assert train["targets"]["fast_vs_reference"]["rmt_l"] == pytest.approx(1500 / 700)
    assert train["targets"]["rmt_l_fast_2x_reference"] is True
    assert train["targets"]["rmt_l_fast_mfu_25pct"] is False
    assert train["targets"]["no_regression_t_s_b"]["rmt_t"] is None  # its reference row ran out of memory
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["ok", "timed out", "skipped: out of time"]


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok[x]" time="1.5"/>
<testcase classname="tests.test_a" name="test_bad" time="0.1"><failure message="assert 1 == 2">trace</failure></testcase>
<testcase classname="tests.test_a" name="test_cuda_skip" time="0"><skipped message="needs CUDA"/></testcase>
<testcase classname="" name="tests.test_data_loader" time="0"><error message="collection failure">
ModuleNotFoundError: No module named 'ffcv'</error></testcase>
<testcase classname="" name="tests.test_broken" time="0"><error message="collection failure">
SyntaxError: invalid syntax</error></testcase>
</testsuite></testsuites>"""


def test_gpu_test_results_count_a_module_needing_ffcv_as_skipped(gpu_check, tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text(JUNIT)
    result = gpu_check.tests_json(junit, rc=1)
    assert result["summary"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 2}
    assert gpu_check.stage_status(result) == 1
    by_name = {r["test"]: r for r in result["tests"]}
    assert by_name["tests.test_data_loader"]["message"] == "module needs ffcv, which this machine lacks"
    assert by_name["tests.test_broken"]["outcome"] == "error"
    only_ffcv = {**result, "summary": {"passed": 1, "failed": 0, "error": 0, "skipped": 2}}
    assert gpu_check.stage_status(only_ffcv) == 0  # pytest said 1 for the module it could not import
    # pytest stopped before writing its XML: the -v lines are what is left
    output = "tests/test_m.py::test_x[a] PASSED [ 50%]\ntests/test_m.py::test_x[b] FAILED [100%]\n"
    result = gpu_check.tests_json(tmp_path / "missing.xml", rc=124, output=output, timed_out=True)
    assert result["summary"]["passed"] == 1 and result["summary"]["failed"] == 1 and result["timed_out"]


def test_env_and_randaugment_stages_on_cpu(gpu_check, one_thread):
    info = gpu_check.env_info("cpu")
    assert info["torch"] == torch.__version__ and info["bf16_matmul_tflops"] > 0
    assert {"gpu", "driver", "timm", "triton", "has_ffcv"} <= set(info)
    result = gpu_check.time_randaugment("cpu", batch=2, size=32, batches=1, spec="rand-m9-mstd0.5-inc1")
    for interpolation in ("bicubic", "bilinear"):
        assert result[interpolation]["ms_per_batch_median"] > 0 and result[interpolation]["img_per_s"] > 0
