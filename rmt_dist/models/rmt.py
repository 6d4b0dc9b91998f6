"""RMT (Fan et al., CVPR 2024): the model, its timm registration and checkpoint mapping.

Registered names: `rmt_t`, `rmt_s`, `rmt_b`, `rmt_l` (each takes `token_label=True`
for the starred forms RMT-S*/B*/L*), and `rmt_test`, a 4-stage miniature for CPU tests
(32x32 input; decomposed MaSA in stages 1-2, full MaSA and layer scale in 3-4).
Parameter and state-dict names equal the released code's (qhfan/RMT), except that the
per-stage `Relpos.angle/decay` buffers are recomputed, never stored (`checkpoint_filter_fn`
drops them after checking they match). Extra create kwargs: `token_label`, `mix_token`,
`attn_impl` (reference|sdpa|flex|auto), `attention` (masa|gmm|vicinity|vanilla, see mixers.py),
`drop_path_rate`.

Contracts other code relies on:

* Input: (B, in_chans, H, W) with H and W multiples of 32; anything else raises ValueError.
* Plain model: `forward(x)` -> logits (B, num_classes).
* Token-label model (`token_label=True`):
    train mode -> `(cls_logits (B, C), aux_logits (B, N, C), box)`; N = tokens of the final
        grid (H/32 * W/32, row-major; 49 at 224). `box` = (bbx1, bby1, bbx2, bby2) on that
        grid (bbx = rows, bby = columns, half-open), or None when MixToken did not run
        (`mix_token=False`). `aux_logits` come back already UN-MIXED (as the released
        model does): row i is aligned with image i's token labels everywhere; the class
        target must be mixed with `mixtoken.mixtoken_lam(box, N)`. `mixtoken.unmix_tokens`
        is the (self-inverse) map the model applies.
    eval mode -> `cls_logits + 0.5 * aux_logits.max(dim=1)` (B, C).
    MixToken uses torch's default RNG only (seeded runs are reproducible).
* Wrap units for FSDP2 / activation checkpointing: `model.blocks()` yields every
  `RMTBlock` (class name "RMTBlock"); `model.stages()` yields the four `RMTStage`s
  (`model.layers`). Blocks are called as `block(x, tables)` with x (B, H, W, C).
* `forward_features(x)` -> last stage tokens (B, H/32, W/32, C) NHWC (the internal layout);
  `forward_head(x, pre_logits=False)` -> logits of the class head (pre_logits: the pooled
  1024-d projection); `forward_intermediates` / `features_only=True` -> the four stage
  maps (before each downsample) in NCHW at strides 4, 8, 16, 32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import ConvStem, DWConv2d, FeedForward, PatchMerging
from .masa import resolve_attn_impl, table_kind, validate_attn_impl
from .mixers import attention_class
from .mixtoken import MixTokenBox, flip_box_region, sample_mixtoken_box
from .tables import RetentionTables, TableCache, head_decays, rotary_angles

STRIDE = 32  # total downsampling; input sides must be multiples of it
MIXTOKEN_POOLING = 8  # stem grid (stride 4) -> final grid (stride 32)


class RMTBlock(nn.Module):
    """CPE (3x3 dwconv) -> x + MaSA(LN(x)) -> x + FFN(LN(x)), optional layer scale."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        decomposed: bool,
        drop_path: float,
        layerscale: bool,
        layer_init_value: float,
        attention: str,
        attn_impl: str,
    ) -> None:
        super().__init__()
        self.pos = DWConv2d(dim, 3, 1, 1)
        self.retention_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.retention = attention_class(attention)(dim, num_heads, decomposed, attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FeedForward(dim, ffn_dim)
        self.layerscale = layerscale
        self.layer_init_value = layer_init_value
        if layerscale:
            self.gamma_1 = nn.Parameter(torch.full((1, 1, 1, dim), layer_init_value))
            self.gamma_2 = nn.Parameter(torch.full((1, 1, 1, dim), layer_init_value))

    def forward(self, x: torch.Tensor, tables: RetentionTables) -> torch.Tensor:
        x = x + self.pos(x)
        attn = self.retention(self.retention_layer_norm(x), tables)
        if self.layerscale:
            attn = self.gamma_1 * attn
        x = x + self.drop_path(attn)
        ffn = self.ffn(self.final_layer_norm(x))
        if self.layerscale:
            ffn = self.gamma_2 * ffn
        return x + self.drop_path(ffn)


class RMTStage(nn.Module):
    """Blocks at one resolution, then (except the last stage) a stride-2 PatchMerging."""

    def __init__(
        self,
        dim: int,
        out_dim: int | None,
        depth: int,
        num_heads: int,
        init_value: float,
        heads_range: float,
        ffn_dim: int,
        drop_path: Sequence[float],
        decomposed: bool,
        layerscale: bool,
        layer_init_value: float,
        attention: str,
        attn_impl: str,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.decomposed = decomposed
        self.attn_impl = attn_impl
        self.grad_checkpointing = False
        self.tables = TableCache(
            num_heads=num_heads, head_dim=dim // num_heads, init_value=init_value, heads_range=heads_range
        )
        self.blocks = nn.ModuleList(
            RMTBlock(
                dim,
                num_heads,
                ffn_dim,
                decomposed,
                drop_path[i],
                layerscale,
                layer_init_value,
                attention,
                attn_impl,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None

    def set_attn_impl(self, attn_impl: str) -> None:
        self.attn_impl = validate_attn_impl(attn_impl)
        for block in cast("Iterable[RMTBlock]", self.blocks):  # nn.ModuleList is untyped
            # Module.__setattr__ is typed for tensors and modules; a plain attribute is fine at run time.
            block.retention.attn_impl = attn_impl  # type: ignore[assignment]

    def stage_tables(self, x: torch.Tensor) -> RetentionTables:
        _, height, width, _ = x.shape
        impl = resolve_attn_impl(self.attn_impl, x.device.type)
        # Under autocast q/k come out of the projections in the autocast dtype.
        device_type = x.device.type
        # Not torch.amp.is_autocast_available: torch 2.11's dynamo breaks the graph on it (10
        # breaks in a whole-model compile). Of the devices the model meets, only meta (the
        # flop counter's) has no autocast state.
        autocast = device_type != "meta" and torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
        return self.tables.get(height, width, x.device, dtype, table_kind(impl, self.decomposed))

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks only: (B, H, W, C) -> (B, H, W, C), the stage's feature map."""
        tables = self.stage_tables(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, tables, use_reentrant=False)
            else:
                x = block(x, tables)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


@dataclass(frozen=True)
class RMTArch:
    """Hyper-parameters of one registered size (the released registrations)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    heads_ranges: tuple[float, float, float, float]
    mlp_ratios: tuple[float, float, float, float]
    decomposed: tuple[bool, bool, bool, bool]
    layerscales: tuple[bool, bool, bool, bool] = (False, False, False, False)
    init_values: tuple[float, float, float, float] = (2, 2, 2, 2)
    layer_init_value: float = 1e-6
    projection: int = 1024
    drop_path_rate: float = 0.1


ARCHS: dict[str, RMTArch] = {
    # Released as RMT_T3, RMT_S, RMT_M2 (RMT-B), RMT_L6.
    "rmt_t": RMTArch((64, 128, 256, 512), (2, 2, 8, 2), (4, 4, 8, 16), (4, 4, 6, 6), (3, 3, 3, 3),
                     (True, True, False, False), drop_path_rate=0.1),
    "rmt_s": RMTArch((64, 128, 256, 512), (3, 4, 18, 4), (4, 4, 8, 16), (4, 4, 6, 6), (4, 4, 3, 3),
                     (True, True, True, False), drop_path_rate=0.15),
    "rmt_b": RMTArch((80, 160, 320, 512), (4, 8, 25, 8), (5, 5, 10, 16), (5, 5, 6, 6), (4, 4, 3, 3),
                     (True, True, True, False), (False, False, True, True), drop_path_rate=0.4),
    "rmt_l": RMTArch((112, 224, 448, 640), (4, 8, 25, 8), (7, 7, 14, 20), (6, 6, 6, 6), (4, 4, 3, 3),
                     (True, True, True, False), (False, False, True, True), drop_path_rate=0.5),
    # CPU-test miniature: every code path (decomposed + full MaSA, layer scale), head_dim 16.
    "rmt_test": RMTArch((32, 32, 64, 64), (1, 1, 2, 1), (2, 2, 4, 4), (4, 4, 6, 6), (2, 2, 2, 2),
                        (True, True, False, False), (False, False, True, True), layer_init_value=1e-1,
                        projection=64, drop_path_rate=0.0),
}  # fmt: skip


class RMT(nn.Module):
    """RMT backbone + classifier head (+ dense aux head and MixToken when token_label)."""

    def __init__(
        self,
        arch: RMTArch,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_path_rate: float | None = None,
        token_label: bool = False,
        mix_token: bool = True,
        attn_impl: str = "auto",
        attention: str = "masa",
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"global_pool={global_pool!r} is not supported; RMT pools with 'avg'")
        validate_attn_impl(attn_impl)
        attention_class(attention)
        self.arch = arch
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.token_label = token_label
        self.mix_token = mix_token
        self.mixtoken_beta = 1.0
        self.attention = attention
        self.num_features = arch.embed_dims[-1]
        self.head_hidden_size = arch.projection
        drop_path_rate = arch.drop_path_rate if drop_path_rate is None else drop_path_rate
        dpr = torch.linspace(0, drop_path_rate, sum(arch.depths), device="cpu").tolist()

        self.patch_embed = ConvStem(in_chans, arch.embed_dims[0])
        self.layers = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        for i, depth in enumerate(arch.depths):
            dim = arch.embed_dims[i]
            first = sum(arch.depths[:i])
            self.layers.append(
                RMTStage(
                    dim=dim,
                    out_dim=arch.embed_dims[i + 1] if i < len(arch.depths) - 1 else None,
                    depth=depth,
                    num_heads=arch.num_heads[i],
                    init_value=arch.init_values[i],
                    heads_range=arch.heads_ranges[i],
                    ffn_dim=int(arch.mlp_ratios[i] * dim),
                    drop_path=dpr[first : first + depth],
                    decomposed=arch.decomposed[i],
                    layerscale=arch.layerscales[i],
                    layer_init_value=arch.layer_init_value,
                    attention=attention,
                    attn_impl=attn_impl,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"layers.{i}"))

        self.proj: nn.Module = nn.Linear(self.num_features, arch.projection)  # Identity once pruned
        self.norm: nn.Module = nn.BatchNorm2d(arch.projection)
        self.head = nn.Linear(arch.projection, num_classes) if num_classes > 0 else nn.Identity()
        if token_label:
            self.aux_head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- initialization -------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """The released init (also usable after `to_empty()` from the meta device).

        The released model calls `apply(_init_weights)` last, so every Linear (q/k/v/out
        included) ends up trunc_normal(std .02) with zero bias; convs and BN keep
        PyTorch's defaults; layer scales start at `layer_init_value`.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d | nn.BatchNorm2d):
                module.reset_parameters()
            elif hasattr(module, "reset_gmm"):  # the gmm ablation's mixture parameters
                cast(Any, module).reset_gmm()
            elif isinstance(module, RMTBlock) and module.layerscale:
                module.gamma_1.fill_(module.layer_init_value)
                module.gamma_2.fill_(module.layer_init_value)
        for stage in self.stages():
            stage.tables.clear()

    # -- structure the engine uses --------------------------------------------------

    def stages(self) -> Iterator[RMTStage]:
        yield from cast("Iterable[RMTStage]", self.layers)  # nn.ModuleList is untyped

    def blocks(self) -> Iterator[RMTBlock]:
        for stage in self.stages():
            yield from cast("Iterable[RMTBlock]", stage.blocks)

    def set_attn_impl(self, attn_impl: str) -> None:
        for stage in self.stages():
            stage.set_attn_impl(attn_impl)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages():
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)"
            if coarse
            else [(r"^layers\.(\d+)\.downsample", (0,)), (r"^layers\.(\d+)\.blocks\.(\d+)", None)],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "", "avg"):
            raise ValueError(f"global_pool={global_pool!r} is not supported; RMT pools with 'avg'")
        self.num_classes = num_classes
        device = self.patch_embed.proj[0].weight.device
        self.head = (
            nn.Linear(self.head_hidden_size, num_classes, device=device) if num_classes > 0 else nn.Identity()
        )
        if self.token_label:
            self.aux_head = (
                nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
            )
        for head in (self.head, getattr(self, "aux_head", None)):
            if isinstance(head, nn.Linear):
                trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    # -- forward ----------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"input shape {tuple(x.shape)} is not (B, {self.in_chans}, H, W); pass NCHW images with "
                f"{self.in_chans} channels (or create the model with in_chans={x.shape[1] if x.ndim == 4 else '?'})"
            )
        height, width = x.shape[-2:]
        if height % STRIDE or width % STRIDE:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of {STRIDE} on both sides; "
                f"resize or crop to e.g. {max(STRIDE, height // STRIDE * STRIDE)}x{max(STRIDE, width // STRIDE * STRIDE)}"
            )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.patch_embed(x)

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.layers:
            x = stage(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> last-stage tokens (B, H/32, W/32, C_last), NHWC."""
        return self.forward_stages(self.forward_stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, h, w, C_last) tokens -> class logits (or the pooled projection if pre_logits)."""
        x = self.proj(x)
        x = F.silu(self.norm(x.permute(0, 3, 1, 2)))  # BN over the projection, then Swish
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward_aux(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C_last) tokens -> dense logits (B, h*w, num_classes) of the token-label head."""
        return self.aux_head(x).flatten(1, 2)

    def forward(self, x: torch.Tensor):
        if not self.token_label:
            return self.forward_head(self.forward_features(x))
        x = self.forward_stem(x)
        box: MixTokenBox | None = None
        if self.mix_token and self.training:
            box = sample_mixtoken_box(
                x.shape[1] // MIXTOKEN_POOLING, x.shape[2] // MIXTOKEN_POOLING, self.mixtoken_beta
            )
            x = flip_box_region(x, box, scale=MIXTOKEN_POOLING)
        x = self.forward_stages(x)
        cls_logits = self.forward_head(x)
        aux = self.aux_head(x)  # (B, h, w, C)
        if not self.training:
            return cls_logits + 0.5 * aux.flatten(1, 2).max(dim=1).values
        if box is not None:
            aux = flip_box_region(aux, box)
        return cls_logits, aux.flatten(1, 2), box

    # -- dense features ------------------------------------------------------------

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage maps (before each downsample), NCHW; timm's feature-extraction API.

        Returns the list of maps if intermediates_only, else (last tokens NHWC, maps).
        `norm` is accepted for API compatibility; RMT has no per-stage output norm.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; use 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        x = self.forward_stem(x)
        intermediates = []
        stages = (
            list(self.stages())[: max_index + 1] if stop_early or intermediates_only else list(self.stages())
        )
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take_indices:
                intermediates.append(x.permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None and (
                i < len(stages) - 1 or not (stop_early or intermediates_only)
            ):
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop stages after the last wanted map (and the heads); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        list(self.stages())[-1].downsample = None
        if prune_head:
            self.proj = nn.Identity()
            self.norm = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.reset_classifier(0)
        return take_indices


# -- checkpoints ------------------------------------------------------------------------

_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def checkpoint_filter_fn(state_dict: dict[str, Any], model: RMT) -> dict[str, torch.Tensor]:
    """Released (qhfan/RMT) or project checkpoint -> this model's state dict.

    Unwraps {"model": ...}-style files (the released training script saves "model",
    "model_ema", optimizer...; "model" is taken first), strips DDP/compile prefixes,
    checks each stage's `Relpos.angle` / `Relpos.decay` against the values this model
    recomputes (a mismatch means a different variant) and drops them, and drops the
    dense `aux_head` when the model has none (starred weights into a plain model).
    """
    while isinstance(state_dict, dict):
        wrapper = next(
            (k for k in _WRAPPER_KEYS if k in state_dict and isinstance(state_dict[k], dict)), None
        )
        if wrapper is None:
            break
        state_dict = state_dict[wrapper]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if ".Relpos." in key:
            _check_relpos(key, value, model)
            continue
        if key.startswith("aux_head.") and not model.token_label:
            continue
        out[key] = value
    return out


def _check_relpos(key: str, value: torch.Tensor, model: RMT) -> None:
    stage_index = int(key.split(".")[1])
    if stage_index >= len(model.layers):
        return
    cache = list(model.stages())[stage_index].tables
    if key.endswith(".angle"):
        expected = rotary_angles(cache.head_dim)
    elif key.endswith(".decay"):
        expected = head_decays(cache.num_heads, cache.init_value, cache.heads_range)
    else:
        raise ValueError(f"checkpoint key {key!r} is not a known RMT buffer; is this an RMT checkpoint?")
    value = value.detach().to("cpu", torch.float32)
    if value.shape != expected.shape or not torch.allclose(value, expected, rtol=1e-5, atol=1e-6):
        raise ValueError(
            f"checkpoint {key} {tuple(value.shape)} does not match this model's stage {stage_index} "
            f"{tuple(expected.shape)}; the checkpoint is for a different RMT variant"
        )


# -- timm registration ----------------------------------------------------------------


def _cfg(crop_pct: float = 0.875, **kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": crop_pct,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0",
        "classifier": "head",
        "license": "see https://github.com/qhfan/RMT",
        "origin_url": "https://github.com/qhfan/RMT",
        "paper_ids": "arXiv:2309.11523",
        **kwargs,
    }


_RELEASED = (
    "released weights are on Baidu Pan (github.com/qhfan/RMT); load the .pth with rmt_dist.models.load_into"
)
default_cfgs = generate_default_cfgs(
    {
        # The released evaluation crops: plain resize 256 -> crop 224 (0.875), token-label 0.96.
        "rmt_t.in1k": _cfg(notes=_RELEASED),
        "rmt_s.in1k": _cfg(notes=_RELEASED),
        "rmt_s.tl_in1k": _cfg(crop_pct=0.96, notes=_RELEASED),
        "rmt_b.in1k": _cfg(notes=_RELEASED),
        "rmt_b.tl_in1k": _cfg(crop_pct=0.96, notes=_RELEASED),
        "rmt_l.in1k": _cfg(notes=_RELEASED),
        "rmt_l.tl_in1k": _cfg(crop_pct=0.96, notes=_RELEASED),
        "rmt_test.untrained": _cfg(input_size=(3, 32, 32), pool_size=(1, 1), num_classes=10),
    }
)


def _create_rmt(variant: str, pretrained: bool = False, **kwargs: Any) -> RMT:
    if (
        kwargs.get("token_label")
        and not kwargs.get("pretrained_cfg")
        and "tl_in1k" in default_cfgs[variant].cfgs
    ):
        kwargs["pretrained_cfg"] = "tl_in1k"
    return build_model_with_cfg(
        RMT,
        variant,
        pretrained,
        arch=ARCHS[variant],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )


@register_model
def rmt_t(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-T (released RMT_T3): 14.3M params, 2.65 GMACs at 224."""
    return _create_rmt("rmt_t", pretrained, **kwargs)


@register_model
def rmt_s(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-S: 27.0M params (27.5M with token_label), 4.80 GMACs at 224."""
    return _create_rmt("rmt_s", pretrained, **kwargs)


@register_model
def rmt_b(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-B (released RMT_M2): 54.2M params (54.7M with token_label), 10.41 GMACs at 224."""
    return _create_rmt("rmt_b", pretrained, **kwargs)


@register_model
def rmt_l(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-L (released RMT_L6): 95.5M params (96.1M with token_label), 19.55 GMACs at 224."""
    return _create_rmt("rmt_l", pretrained, **kwargs)


@register_model
def rmt_test(pretrained: bool = False, **kwargs: Any) -> RMT:
    """Miniature for CPU tests (32x32 and up): every RMT code path, a few ms per step."""
    return _create_rmt("rmt_test", pretrained, **kwargs)
