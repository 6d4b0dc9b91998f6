"""The spatial-prior ablation mixers (spatial_prior.py) against slow, direct implementations
of their papers' formulas, forward and backward; Vicinity's linear cost; and every variant
building, running and training in the RMT model.

The slow references share only the layers they do not test (q/k/v/out projections and the
LCE conv) with the module; the attention itself is recomputed token by token from grid
positions with explicit loops, or as an explicit (L, L) matrix.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from test_engine_support import digits_dir, records
from torch.utils.flop_counter import FlopCounterMode

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.models.mixers import ATTENTIONS, attention_class
from rmt_dist.models.spatial_prior import GaussianMixtureMaskAttention, VanillaAttention, VicinityAttention
from rmt_dist.train import main

VARIANTS = ("masa", "gmm", "vicinity", "vanilla")
GRIDS = [(3, 5), (4, 2), (1, 3)]  # non-square, incl. a single row
TOLERANCE = 1e-5  # relative, fp32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def positions(height: int, width: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(height) for c in range(width)]


# -- slow references: per-sequence attention with explicit (L, L) matrices --------------


def softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    exp = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    return exp / exp.sum(dim=-1, keepdim=True)


def slow_vanilla(q, k, v, coords, head: int, module) -> torch.Tensor:
    """out_i = sum_j softmax_j(q_i.k_j / sqrt(d)) v_j for one sequence of one head: (L, d)."""
    return softmax_rows(q @ k.T / math.sqrt(q.shape[-1])) @ v


def slow_gmm(q, k, v, coords, head: int, module) -> torch.Tensor:
    """The released Gaussian_Mixture_Mask written literally: mask M = exp(-D)^(1/2) from the
    positions, G = sum_k alpha_k M^(1/(sigma_k^2 + 1e-5)), scores multiplied by G."""
    length = len(coords)
    base = torch.zeros(length, length)
    for i, (ri, ci) in enumerate(coords):
        for j, (rj, cj) in enumerate(coords):
            base[i, j] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2)) ** 0.5
    mixture = sum(
        module.gmm_alpha[kernel, head] * base ** (1 / (module.gmm_sigma[kernel, head] ** 2 + 1e-5))
        for kernel in range(module.num_kernels)
    )
    return softmax_rows(q @ k.T / math.sqrt(q.shape[-1]) * mixture) @ v


def slow_vicinity(q, k, v, coords, grid: tuple[int, int]) -> torch.Tensor:
    """A_ij = relu(q_i).relu(k_j) (cos(a_i - a_j) + cos(b_i - b_j)), a = pi/2 r/H, b = pi/2 c/W;
    out_i = sum_j A_ij v_j / (sum_j A_ij + 1e-4): the quadratic form of Vicinity Attention."""
    height, width = grid
    length = len(coords)
    decay = torch.zeros(length, length)
    for i, (ri, ci) in enumerate(coords):
        for j, (rj, cj) in enumerate(coords):
            decay[i, j] = math.cos(math.pi / 2 * (ri - rj) / height) + math.cos(
                math.pi / 2 * (ci - cj) / width
            )
    weights = (F.relu(q) @ F.relu(k).T) * decay
    return weights @ v / (weights.sum(dim=-1, keepdim=True) + 1e-4)


def slow_softmax_mixer(module, x: torch.Tensor, attend) -> torch.Tensor:
    """Decomposed: attend within each row (along W), then within each column (along H) over
    the row pass's output; full: over the whole row-major grid. Loops over batch and heads."""
    batch, height, width, dim = x.shape
    heads, head_dim = module.num_heads, module.head_dim
    q, k, v = module.q_proj(x), module.k_proj(x), module.v_proj(x)
    lepe = module.lepe(v)

    def per_head(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, heads, d)
        return t.reshape(batch, height, width, heads, head_dim)

    q, k, v = per_head(q), per_head(k), per_head(v)
    out = torch.zeros(batch, height, width, heads, head_dim)
    for b in range(batch):
        for h in range(heads):
            if module.decomposed:
                rows = []
                for r in range(height):
                    coords = [(r, c) for c in range(width)]
                    rows.append(attend(q[b, r, :, h], k[b, r, :, h], v[b, r, :, h], coords, h, module))
                by_row = torch.stack(rows)  # (H, W, d)
                cols = []
                for c in range(width):
                    coords = [(r, c) for r in range(height)]
                    cols.append(attend(q[b, :, c, h], k[b, :, c, h], by_row[:, c], coords, h, module))
                out[b, :, :, h] = torch.stack(cols, dim=1)
            else:
                flat = [t[b, :, :, h].reshape(height * width, head_dim) for t in (q, k, v)]
                full = attend(*flat, positions(height, width), h, module)
                out[b, :, :, h] = full.reshape(height, width, head_dim)
    return module.out_proj(out.reshape(batch, height, width, dim) + lepe)


def slow_vicinity_mixer(module, x: torch.Tensor) -> torch.Tensor:
    batch, height, width, _ = x.shape
    heads, head_dim = module.num_heads, module.head_dim
    q, k, v = module.q_proj(x), module.k_proj(x), module.v_proj(x)
    lepe = module.lepe(v)
    out = torch.zeros(batch, height, width, heads, head_dim)
    for b in range(batch):
        for h in range(heads):
            flat = [t[b].reshape(height * width, heads, head_dim)[:, h] for t in (q, k, v)]
            full = slow_vicinity(*flat, positions(height, width), (height, width))
            out[b, :, :, h] = full.reshape(height, width, head_dim)
    return module.out_proj(out.reshape(batch, height, width, heads * head_dim) + lepe)


SLOW = {
    VanillaAttention: lambda m, x: slow_softmax_mixer(m, x, slow_vanilla),
    GaussianMixtureMaskAttention: lambda m, x: slow_softmax_mixer(m, x, slow_gmm),
    VicinityAttention: slow_vicinity_mixer,
}


def _make(cls, decomposed: bool, impl: str = "reference") -> torch.nn.Module:
    torch.manual_seed(0)
    module = cls(dim=32, num_heads=2, decomposed=decomposed, attn_impl=impl)
    with torch.no_grad():  # non-zero biases so every projection matters
        for linear in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
            linear.bias.normal_(0, 0.1)
    return module


def _forward_backward(module, x: torch.Tensor, fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = fn(x)
    torch.manual_seed(1)
    (out * torch.randn_like(out)).sum().backward()  # a random cotangent: every output matters
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("decomposed", [True, False], ids=["decomposed", "full"])
@pytest.mark.parametrize("cls", list(SLOW), ids=lambda c: c.__name__)
def test_mixer_matches_the_papers_formula_forward_and_backward(cls, decomposed, grid):
    module = _make(cls, decomposed)
    torch.manual_seed(2)
    x = torch.randn(2, *grid, 32)
    fast, fast_grads = _forward_backward(module, x, lambda t: module(t, tables=None))
    slow, slow_grads = _forward_backward(module, x, lambda t: SLOW[cls](module, t))
    assert rel_err(fast, slow) < TOLERANCE
    assert_grads_close(fast_grads, slow_grads, softmax_without_prior=cls is VanillaAttention)


def assert_grads_close(fast: dict, slow: dict, softmax_without_prior: bool) -> None:
    assert fast.keys() == slow.keys()
    for name in fast:
        if softmax_without_prior and name == "k_proj.bias":
            # softmax is shift-invariant per row and q_i.b_k is constant in j: exactly zero
            assert fast[name].abs().max() < 1e-6 and slow[name].abs().max() < 1e-6
            continue
        assert slow[name].abs().sum() > 0, f"{name} gets no gradient in the reference"
        assert rel_err(fast[name], slow[name]) < TOLERANCE, name


def test_vanilla_sdpa_kernel_equals_reference():
    x = torch.randn(2, 4, 6, 32)
    for decomposed in (True, False):
        reference = _make(VanillaAttention, decomposed, "reference")
        sdpa = _make(VanillaAttention, decomposed, "sdpa")
        out_ref, grads_ref = _forward_backward(reference, x, lambda t: reference(t, None))  # noqa: B023
        out_sdpa, grads_sdpa = _forward_backward(sdpa, x, lambda t: sdpa(t, None))  # noqa: B023
        assert rel_err(out_sdpa, out_ref) < TOLERANCE
        assert_grads_close(grads_sdpa, grads_ref, softmax_without_prior=True)


def test_gmm_init_and_shapes_follow_the_released_code():
    torch.manual_seed(0)
    module = GaussianMixtureMaskAttention(dim=64, num_heads=8, decomposed=False, num_kernels=5)
    many = GaussianMixtureMaskAttention(dim=1000, num_heads=1000, decomposed=False)
    assert module.gmm_alpha.shape == module.gmm_sigma.shape == (5, 8)
    # sigma ~ N(10, 10^2), alpha ~ N(0, 2^2): statistics of 5000 draws
    assert abs(many.gmm_sigma.mean().item() - 10) < 0.6 and abs(many.gmm_sigma.std().item() - 10) < 0.6
    assert abs(many.gmm_alpha.mean().item()) < 0.12 and abs(many.gmm_alpha.std().item() - 2) < 0.12
    # The mixture stays finite (and differentiable) at distances where exp(-D)^(1/2) underflows.
    far = torch.tensor([[0.0, 55.0**2 * 2]])
    module.mixture(far).sum().backward()
    assert torch.isfinite(module.gmm_sigma.grad).all() and torch.isfinite(module.gmm_alpha.grad).all()


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_vicinity_cost_grows_linearly_with_tokens():
    torch.manual_seed(0)
    vicinity = VicinityAttention(dim=32, num_heads=2, decomposed=False)
    vanilla = VanillaAttention(dim=32, num_heads=2, decomposed=False, attn_impl="reference")
    small, large = torch.randn(1, 16, 16, 32), torch.randn(1, 32, 32, 32)  # 4x the tokens
    vic = _flops(lambda: vicinity(large, None)) / _flops(lambda: vicinity(small, None))
    van = _flops(lambda: vanilla(large, None)) / _flops(lambda: vanilla(small, None))
    assert 3.9 < vic < 4.1, f"vicinity FLOPs grew {vic:.2f}x for 4x tokens"
    assert van > 12, f"vanilla FLOPs grew {van:.2f}x for 4x tokens (quadratic expected)"


def test_vicinity_model_cost_grows_linearly_with_pixels():
    """The whole rmt_test with vicinity everywhere is linear in pixels; with vanilla it is not."""
    ratio = {}
    for attention in ("vicinity", "vanilla"):
        with torch.device("meta"):
            model = timm.create_model("rmt_test", attention=attention, num_classes=10).eval()
            count = [_flops(lambda s=s: model(torch.empty(1, 3, s, s))) for s in (256, 512)]  # noqa: B023
        ratio[attention] = count[1] / count[0]
    assert 3.9 < ratio["vicinity"] < 4.1, ratio
    assert ratio["vanilla"] > 5, ratio  # full attention in stages 3-4 is quadratic


@pytest.mark.parametrize("attention", VARIANTS)
def test_every_variant_builds_and_trains_in_rmt(attention):
    torch.manual_seed(0)
    model = timm.create_model("rmt_test", attention=attention, num_classes=10)
    assert model.attention == attention
    assert all(isinstance(b.retention, ATTENTIONS[attention]) for b in model.blocks())
    for side in (32, 64):
        model.zero_grad(set_to_none=True)
        batch = 2 if side == 32 else 1  # train-mode BatchNorm needs > 1 value: 2 images at a 1x1 grid
        logits = model(torch.randn(batch, 3, side, side))
        assert logits.shape == (batch, 10) and torch.isfinite(logits).all()
        logits.logsumexp(dim=-1).sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.set_attn_impl("sdpa")  # the engine may switch kernels on any variant
    assert model(torch.randn(1, 3, 32, 64)).shape == (1, 10)


def test_unknown_attention_is_a_clear_error():
    with pytest.raises(
        ValueError, match="attention='swin' is unknown; use one of masa, gmm, vicinity, vanilla"
    ):
        attention_class("swin")
    with pytest.raises(ValueError, match="attention='gmmm' is unknown"):
        timm.create_model("rmt_test", attention="gmmm")
    with pytest.raises(ValueError, match=r"dim=36 is not divisible by num_heads\*2=8"):
        VicinityAttention(dim=36, num_heads=4, decomposed=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_dir(tmp_path_factory)


@pytest.mark.parametrize("attention", VARIANTS)
def test_smoke_recipe_trains_with_each_variant(attention, digits, tmp_path):
    run_dir = tmp_path / "run"
    argv = ["recipes/smoke.yaml", f"model.attention={attention}", f"run.dir={run_dir}",
            f"data.train={digits}/train.beton", f"data.val={digits}/val.beton", "run.stop_after_steps=3",
            "run.log_every=1", "data.num_workers=1"]  # fmt: skip
    assert main(argv) == 0
    losses = [r["loss"] for r in records(run_dir) if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses), losses
