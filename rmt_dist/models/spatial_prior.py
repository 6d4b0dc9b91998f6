"""Token mixers for RMT's spatial-prior ablation: `vanilla`, `gmm` and `vicinity`.

Each is a drop-in for MaSA (masa.py): constructor (dim, num_heads, decomposed, attn_impl),
forward(x, tables) on (B, H, W, C) tokens, with the same q/k/v/out projections and the
same LCE (`lepe`, a 5x5 depthwise conv on V added to the attention output). CPE, FFN and
stem live in the block and model and are shared by every variant. Notation per head h:
tokens i, j at grid row r and column c, d = head dim, s = d^-1/2.

vanilla — softmax attention without any spatial prior (no decay, no rotary; RMT's
    "MaSA vs vanilla" ablation): out_i = sum_j softmax_j(s q_i.k_j) v_j.
    Decomposed stages keep MaSA's axis structure: attention along W (within each row),
    then along H (within each column) over the first pass's output; full stages attend
    over the whole grid. Kernels: `reference` (matmul + softmax) or F.sdpa for
    `sdpa`/`flex` (with no score to modify, flex has nothing to add over sdpa).

gmm — Gaussian mixture mask (Li et al., arXiv 2309.05375): the scores are MULTIPLIED
    before the softmax by a per-head mixture of K Gaussians of the squared Euclidean
    distance between patch positions:
        G_h(i, j) = sum_k alpha_kh * exp(-D_ij / (2 (sigma_kh^2 + 1e-5))),  D_ij = dr^2 + dc^2
        out_i = sum_j softmax_j(s q_i.k_j * G_h(i, j)) v_j
    The released code writes the same thing as alpha * M^(1/(sigma^2+1e-5)) with
    M = exp(-D)^(1/2); here the exponent is folded in, which is identical where M is
    representable and does not underflow to 0 (then NaN gradients) at distances beyond
    ~14 patches (RMT-S stage 1 spans 55). Init as the released code: sigma ~ N(10, 10^2),
    alpha ~ N(0, 2^2), K = 5. Decomposed stages: the along-W pass uses D = dc^2, the
    along-H pass D = dr^2, with the SAME alpha/sigma (an isotropic Gaussian factorises over
    the axes). Always the matmul kernel: a multiplicative mask has no sdpa/flex form here.

vicinity — Vicinity Attention (Sun et al., arXiv 2206.10552), linear in the token count.
    Feature reduction: q, k, v are projected to C/2 (the released fr_ratio 2) and
    out_proj maps C/2 back to C; the LCE therefore convolves the reduced V and is added to
    the reduced attention output (a DWConv2d(C/2, 5) — the same LCE in the space where V
    and the output live). With phi = ReLU and angles a_i = (pi/2) r_i / H,
    b_i = (pi/2) c_i / W:
        q'_i = [phi(q_i) cos a_i, phi(q_i) sin a_i, phi(q_i) cos b_i, phi(q_i) sin b_i], k' alike
        q'_i.k'_j = phi(q_i).phi(k_j) (cos(a_i - a_j) + cos(b_i - b_j))   (separable Manhattan-like decay)
        out_i = q'_i (sum_j k'_j^T v_j) / (q'_i . sum_j k'_j + 1e-4)      (the paper's normalisation)
    computed right-to-left so cost is O(L d^2), never (L, L). No softmax scale, as released.
    The aggregation runs in fp32 (cheap: linear) in place of the released abs-clamps,
    which guarded fp16. Decomposed stages: full 2-D vicinity attention over the whole grid
    (it is already linear, and a per-row pass would drop half of the 2-D prior), so the
    `decomposed` flag is accepted and ignored. Left out: the released block's SE-style
    "feature preserving connection" (the LCE is RMT's local skip) and spatial reduction
    (released VVT uses sr_ratio 1). `attn_impl` is accepted and ignored (one kernel).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DWConv2d
from .masa import ProjectedMixer, resolve_attn_impl, validate_attn_impl
from .tables import RetentionTables

GMM_KERNELS = 5  # the released default (--num_kernals 5)
GMM_SIGMA_EPS = 1e-5  # released: M ** (1 / (sigma**2 + 1e-5))
VICINITY_FEATURE_REDUCTION = 2  # released VVT fr_ratio
VICINITY_EPS = 1e-4  # released: 1 / (q'.sum_k' + 1e-4)


def _check_heads(dim: int, num_heads: int, divisor: int = 1) -> None:
    if dim % (num_heads * divisor) != 0:
        raise ValueError(
            f"dim={dim} is not divisible by num_heads*{divisor}={num_heads * divisor}; pick dim a multiple of it"
        )


def _heads_full(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H, W, heads*d) -> (B, heads, H*W, d), row-major tokens."""
    batch, height, width, channels = t.shape
    return t.reshape(batch, height * width, heads, channels // heads).transpose(1, 2)


def _merge_full(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, heads, H*W, d) -> (B, H, W, heads*d)."""
    batch, heads, _, head_dim = t.shape
    return t.transpose(1, 2).reshape(batch, height, width, heads * head_dim)


def _heads_along_w(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H, W, heads*d) -> (B*H, heads, W, d): one sequence per row."""
    batch, height, width, channels = t.shape
    return t.reshape(batch * height, width, heads, channels // heads).transpose(1, 2)


def _heads_along_h(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H, W, heads*d) -> (B*W, heads, H, d): one sequence per column."""
    batch, height, width, channels = t.shape
    return t.permute(0, 2, 1, 3).reshape(batch * width, height, heads, channels // heads).transpose(1, 2)


def _merge_along_w(t: torch.Tensor, batch: int, height: int) -> torch.Tensor:
    """(B*H, heads, W, d) -> (B, H, W, heads*d)."""
    _, heads, width, head_dim = t.shape
    return t.transpose(1, 2).reshape(batch, height, width, heads * head_dim)


def _merge_along_h(t: torch.Tensor, batch: int, width: int) -> torch.Tensor:
    """(B*W, heads, H, d) -> (B, H, W, heads*d)."""
    _, heads, height, head_dim = t.shape
    return t.transpose(1, 2).reshape(batch, width, height, heads * head_dim).permute(0, 2, 1, 3)


def squared_distance_1d(length: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(length, device=device, dtype=torch.float32)
    return (index[:, None] - index[None, :]) ** 2


def squared_distance_2d(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Squared Euclidean distance between the tokens of an H x W grid (row-major): (HW, HW)."""
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(height * width, 2)
    return ((grid[:, None, :] - grid[None, :, :]) ** 2).sum(dim=-1)


class _SoftmaxMixer(ProjectedMixer):
    """Projections, LCE and the axis plumbing shared by the softmax variants.

    Subclasses supply `_attend(q, k, v, sq_dist, impl)` on (batch', heads, L, d) tensors,
    where sq_dist is the (L, L) squared distance between the sequence's positions.
    """

    def _attend(self, q, k, v, sq_dist: torch.Tensor, impl: str) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, tables: RetentionTables) -> torch.Tensor:
        batch, height, width, _ = x.shape
        impl = resolve_attn_impl(self.attn_impl, x.device.type)
        heads = self.num_heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        lepe = self.lepe(v)
        if self.decomposed:
            # Same order as MaSA: along W, then along H over the W pass's output.
            dist_w = squared_distance_1d(width, x.device)
            out_w = self._attend(
                _heads_along_w(q, heads), _heads_along_w(k, heads), _heads_along_w(v, heads), dist_w, impl
            )
            out_w = _merge_along_w(out_w, batch, height)
            dist_h = squared_distance_1d(height, x.device)
            out = self._attend(
                _heads_along_h(q, heads), _heads_along_h(k, heads), _heads_along_h(out_w, heads), dist_h, impl
            )
            out = _merge_along_h(out, batch, width)
        else:
            dist = squared_distance_2d(height, width, x.device)
            out = self._attend(
                _heads_full(q, heads), _heads_full(k, heads), _heads_full(v, heads), dist, impl
            )
            out = _merge_full(out, height, width)
        return self.out_proj(out + lepe)


class VanillaAttention(_SoftmaxMixer):
    """Softmax attention with no spatial prior (decomposed: along W then H, like MaSA)."""

    def _attend(self, q, k, v, sq_dist: torch.Tensor, impl: str) -> torch.Tensor:
        if impl == "reference":
            scores = torch.matmul(q, (k * self.scale).transpose(-1, -2))
            return torch.matmul(torch.softmax(scores, dim=-1), v)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)


class GaussianMixtureMaskAttention(_SoftmaxMixer):
    """Softmax attention whose scores are multiplied by a learnable per-head Gaussian mixture."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decomposed: bool,
        attn_impl: str = "auto",
        num_kernels: int = GMM_KERNELS,
    ) -> None:
        super().__init__(dim, num_heads, decomposed, attn_impl)
        self.num_kernels = num_kernels
        self.gmm_alpha = nn.Parameter(torch.empty(num_kernels, num_heads))
        self.gmm_sigma = nn.Parameter(torch.empty(num_kernels, num_heads))
        self.reset_gmm()

    @torch.no_grad()
    def reset_gmm(self) -> None:
        """The released init: sigma = 10 + 10 N(0, 1), alpha = 2 N(0, 1) per kernel and head."""
        self.gmm_sigma.copy_(torch.randn_like(self.gmm_sigma) * 10 + 10)
        self.gmm_alpha.copy_(torch.randn_like(self.gmm_alpha) * 2)

    def mixture(self, sq_dist: torch.Tensor) -> torch.Tensor:
        """G (heads, L, L) for squared distances (L, L), in fp32 whatever the autocast dtype."""
        alpha = self.gmm_alpha.float()[:, :, None, None]
        width = 2 * (self.gmm_sigma.float() ** 2 + GMM_SIGMA_EPS)[:, :, None, None]
        return (alpha * torch.exp(-sq_dist / width)).sum(dim=0)

    def _attend(self, q, k, v, sq_dist: torch.Tensor, impl: str) -> torch.Tensor:
        scores = torch.matmul(q, (k * self.scale).transpose(-1, -2))
        attn = torch.softmax(scores * self.mixture(sq_dist), dim=-1)
        return torch.matmul(attn.to(v.dtype), v)


def vicinity_angles(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column angles (pi/2) r / H and (pi/2) c / W of the row-major tokens: two (H*W,)."""
    index = torch.arange(height * width, device=device)
    rows = torch.div(index, width, rounding_mode="floor").float()
    cols = (index % width).float()
    return (math.pi / 2) * rows / height, (math.pi / 2) * cols / width


def vicinity_features(t: torch.Tensor, row_angle: torch.Tensor, col_angle: torch.Tensor) -> torch.Tensor:
    """phi(t) expanded with cos/sin of both angles: (..., L, d) -> (..., L, 4d)."""
    t = F.relu(t)
    row, col = row_angle[:, None], col_angle[:, None]
    return torch.cat([t * torch.cos(row), t * torch.sin(row), t * torch.cos(col), t * torch.sin(col)], dim=-1)


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    # torch.autocast rejects device types without autocast (meta, used to count FLOPs).
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class VicinityAttention(nn.Module):
    """Linear attention with a ReLU feature map and a separable Manhattan-like decay, in C/2."""

    def __init__(self, dim: int, num_heads: int, decomposed: bool, attn_impl: str = "auto") -> None:
        super().__init__()
        _check_heads(dim, num_heads, VICINITY_FEATURE_REDUCTION)
        reduced = dim // VICINITY_FEATURE_REDUCTION
        self.num_heads = num_heads
        self.head_dim = reduced // num_heads
        self.decomposed = decomposed  # full 2-D attention either way (module docstring)
        self.attn_impl = validate_attn_impl(attn_impl)  # one kernel; kept for set_attn_impl
        self.q_proj = nn.Linear(dim, reduced)
        self.k_proj = nn.Linear(dim, reduced)
        self.v_proj = nn.Linear(dim, reduced)
        self.lepe = DWConv2d(reduced, 5, 1, 2)
        self.out_proj = nn.Linear(reduced, dim)

    def forward(self, x: torch.Tensor, tables: RetentionTables) -> torch.Tensor:
        _, height, width, _ = x.shape
        heads = self.num_heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        lepe = self.lepe(v)
        row_angle, col_angle = vicinity_angles(height, width, x.device)
        # fp32 aggregation: sums over all tokens of non-negative features (see docstring).
        q_ = vicinity_features(_heads_full(q, heads).float(), row_angle, col_angle)  # (B, n, L, 4d)
        k_ = vicinity_features(_heads_full(k, heads).float(), row_angle, col_angle)
        v_ = _heads_full(v, heads).float()  # (B, n, L, d)
        with _without_autocast(x.device.type):
            kv = torch.matmul(k_.transpose(-1, -2), v_)  # (B, n, 4d, d)
            normaliser = torch.matmul(q_, k_.sum(dim=-2).unsqueeze(-1)) + VICINITY_EPS  # (B, n, L, 1)
            out = torch.matmul(q_, kv) / normaliser
        out = _merge_full(out.to(v.dtype), height, width)
        return self.out_proj(out + lepe)
