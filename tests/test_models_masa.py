"""Every MaSA kernel (attn_impl) equals `reference` in forward and gradients; tables are cached.

Relative error = ||a - b|| / ||b|| over a whole tensor; fp32 within 1e-5, bf16 within 2e-2.
On CPU, FlexAttention only runs eagerly and forward-only, so its gradients (and the
compiled kernel) are tested on CUDA only.
"""

from __future__ import annotations

import contextlib

import pytest
import timm
import torch

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.models import tables as tables_module
from rmt_dist.models.masa import MaSA, resolve_attn_impl, table_kind
from rmt_dist.models.tables import build_tables

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _autocast(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


def _run_masa(
    impl: str, decomposed: bool, grid: tuple[int, int], dtype: torch.dtype, device: str, grad: bool
):
    torch.manual_seed(0)
    masa = MaSA(dim=64, num_heads=4, decomposed=decomposed, attn_impl=impl).to(device)
    x = torch.randn(2, *grid, 64, device=device, requires_grad=grad)
    tables = build_tables(
        *grid, num_heads=4, head_dim=16, init_value=2, heads_range=4,
        kind=table_kind(impl, decomposed), device=torch.device(device), dtype=dtype,
    )  # fmt: skip
    with torch.set_grad_enabled(grad), _autocast(device, dtype):
        out = masa(x, tables)
    if not grad:
        return out, {}
    out.float().pow(2).mean().backward()
    grads = {"x": x.grad, **{n: p.grad for n, p in masa.named_parameters()}}
    return out, grads


def _assert_matches_reference(impl, decomposed, grid, dtype, device, grad=True):
    ref_out, ref_grads = _run_masa("reference", decomposed, grid, dtype, device, grad)
    out, grads = _run_masa(impl, decomposed, grid, dtype, device, grad)
    tol = TOLERANCE[dtype]
    assert rel_err(out, ref_out) <= tol
    for name, g in ref_grads.items():
        assert rel_err(grads[name], g) <= tol, name


GRIDS = [(7, 7), (4, 6), (6, 4), (14, 10)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("decomposed", [False, True], ids=["full", "decomposed"])
def test_sdpa_matches_reference(decomposed: bool, grid: tuple[int, int], dtype: torch.dtype) -> None:
    _assert_matches_reference("sdpa", decomposed, grid, dtype, "cpu")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("grid", [(7, 7), (4, 6)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("decomposed", [False, True], ids=["full", "decomposed"])
def test_flex_score_mod_matches_reference_forward_on_cpu(decomposed: bool, grid: tuple[int, int]) -> None:
    _assert_matches_reference("flex", decomposed, grid, torch.float32, "cpu", grad=False)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("decomposed", [False, True], ids=["full", "decomposed"])
@pytest.mark.parametrize("impl", ["sdpa", "flex"])
def test_cuda_kernels_match_reference(
    impl: str, decomposed: bool, grid: tuple[int, int], dtype: torch.dtype
) -> None:
    _assert_matches_reference(impl, decomposed, grid, dtype, "cuda")


def _model_step(impl: str, size: tuple[int, int], dtype: torch.dtype, device: str = "cpu"):
    torch.manual_seed(0)
    model = timm.create_model("rmt_test", num_classes=10, attn_impl=impl).to(device).eval()
    x = torch.randn(2, 3, *size, device=device, requires_grad=True)
    with _autocast(device, dtype):
        out = model(x)
    out.float().pow(2).sum().backward()
    return out, {"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


def _grouped(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients concatenated per stage (plus the input and the rest)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, g in grads.items():
        key = (
            ".".join(name.split(".")[:2]) if name.startswith("layers.") else ("x" if name == "x" else "other")
        )
        groups.setdefault(key, []).append(g.flatten().float())
    return {k: torch.cat(v) for k, v in groups.items()}


def _assert_model_matches_reference(
    impl: str, size: tuple[int, int], dtype: torch.dtype, device: str
) -> None:
    ref_out, ref_grads = _model_step("reference", size, dtype, device)
    out, grads = _model_step(impl, size, dtype, device)
    tol = TOLERANCE[dtype]
    assert rel_err(out, ref_out) <= tol
    if dtype == torch.float32:
        for name, g in ref_grads.items():
            assert rel_err(grads[name], g) <= tol, name
    else:
        # In bf16 a few tiny per-tensor gradients (e.g. stage-1 q biases behind a nearly
        # uniform softmax) are dominated by rounding noise in every kernel, reference
        # included; the gradient of each stage as a whole is the meaningful quantity.
        ref_groups, groups = _grouped(ref_grads), _grouped(grads)
        for name, g in ref_groups.items():
            assert rel_err(groups[name], g) <= tol, name


@pytest.mark.parametrize(
    ("size", "dtype"),
    [((64, 64), torch.float32), ((64, 96), torch.float32), ((96, 64), torch.bfloat16)],
    ids=["64x64-fp32", "64x96-fp32", "96x64-bf16"],
)
def test_model_sdpa_matches_reference(size: tuple[int, int], dtype: torch.dtype) -> None:
    _assert_model_matches_reference("sdpa", size, dtype, "cpu")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["sdpa", "flex", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_model_matches_reference(impl: str, dtype: torch.dtype) -> None:
    _assert_model_matches_reference(impl, (64, 96), dtype, "cuda")


def test_auto_resolves_to_a_concrete_kernel_per_device() -> None:
    assert resolve_attn_impl("auto", "cpu") == "reference"  # measured, docs/perf.md
    assert resolve_attn_impl("auto", "cuda") == "sdpa"
    assert resolve_attn_impl("flex", "cpu") == "flex"


def test_tables_are_cached_per_resolution_device_and_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    real_build = tables_module.build_tables

    def counting_build(height, width, **kwargs):
        calls.append((height, width, kwargs["dtype"], kwargs["kind"]))
        return real_build(height, width, **kwargs)

    monkeypatch.setattr(tables_module, "build_tables", counting_build)
    model = timm.create_model("rmt_test", num_classes=10, attn_impl="reference").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        assert len(calls) == 4  # one per stage, shared by its blocks
        model(torch.randn(2, 3, 64, 64))
        assert len(calls) == 4  # same resolution: nothing rebuilt
        model(torch.randn(1, 3, 64, 96))
        assert len(calls) == 8
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(1, 3, 64, 96))
        assert len(calls) == 12 and all(c[2] == torch.bfloat16 for c in calls[8:])
        model.set_attn_impl("flex")
        assert {c[3] for c in calls} == {"full_bias", "decomposed_bias"}


def test_full_bias_table_is_the_manhattan_decay() -> None:
    t = build_tables(
        2, 3, num_heads=2, head_dim=4, init_value=2, heads_range=4,
        kind="full_bias", device=torch.device("cpu"), dtype=torch.float32,
    )  # fmt: skip
    gamma = torch.log(1 - torch.tensor([2.0**-2, 2.0**-4]))
    # token 0 = (0, 0), token 5 = (1, 2): Manhattan distance 3.
    assert torch.allclose(t.bias[:, 0, 5], 3 * gamma)
    assert torch.allclose(t.bias[:, 4, 4], torch.zeros(2))
    assert t.bias.shape == (2, 6, 6) and t.sin.shape == (2, 3, 4)
    assert t.bias.stride(1) % 16 == 0  # rows stored aligned for the fused CUDA sdpa kernels
