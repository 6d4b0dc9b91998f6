"""bench/train_step.py on CPU with rmt_test: the table a GPU session will fill in is well formed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def one_thread():
    # Two OpenMP threads on a shared 2-core machine run tiny models ~30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reference_and_fast_rows_with_positive_numbers(bench, one_thread) -> None:
    args = bench.parse_args(["--device", "cpu", "--models", "rmt_test", "--img-size", "64",
                             "--batch-size", "2", "--steps", "2", "--warmup", "1"])
    assert args.compile == "none" and args.precision == "fp32"  # CPU defaults
    rows, header = bench.run(args)
    assert [(r.model, r.path, r.status) for r in rows] == [("rmt_test", "reference", "ok"), ("rmt_test", "fast", "ok")]
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
