"""What users of the RMT backbone rely on: timm API, token labeling, features, errors."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import timm
import torch

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
import rmt_dist.models.rmt as rmt_module
from rmt_dist.models import (
    RMTBlock,
    flip_box_region,
    mixtoken_lam,
    sample_mixtoken_box,
    unmix_tokens,
)


def make(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("rmt_test", num_classes=10, **kwargs)


def test_import_registers_every_variant_with_timm() -> None:
    assert {"rmt_t", "rmt_s", "rmt_b", "rmt_l", "rmt_test"} <= set(timm.list_models("rmt_*"))


def test_smoke_variant_trains_at_32px() -> None:
    model = make().train()
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_wrap_units_and_stages_are_exposed() -> None:
    model = make()
    blocks = list(model.blocks())
    assert len(blocks) == sum(model.arch.depths) == 5
    assert all(type(b) is RMTBlock and type(b).__name__ == "RMTBlock" for b in blocks)
    assert [s.decomposed for s in model.stages()] == [True, True, False, False]
    assert list(model.stages()) == list(model.layers)


# -- token labeling ------------------------------------------------------------------


def test_token_label_train_output_contract() -> None:
    model = make(token_label=True).train()
    cls_logits, aux_logits, box = model(torch.randn(3, 3, 64, 96))
    assert cls_logits.shape == (3, 10)
    assert aux_logits.shape == (3, 2 * 3, 10)  # final grid 2x3
    bbx1, bby1, bbx2, bby2 = box
    assert 0 <= bbx1 <= bbx2 <= 2 and 0 <= bby1 <= bby2 <= 3
    assert all(isinstance(v, int) for v in box)


def test_token_label_without_mixtoken_returns_no_box() -> None:
    model = make(token_label=True, mix_token=False).train()
    x = torch.randn(2, 3, 64, 64)
    cls_logits, aux_logits, box = model(x)
    assert box is None
    feats = model.forward_features(x)
    assert torch.allclose(aux_logits, model.forward_aux(feats), atol=1e-6)
    assert torch.allclose(cls_logits, model.forward_head(feats), atol=1e-6)


def test_token_label_eval_output_is_cls_plus_half_max_token() -> None:
    model = make(token_label=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        expected = model.forward_head(feats) + 0.5 * model.forward_aux(feats).max(dim=1).values
    assert out.shape == (2, 10)
    assert torch.allclose(out, expected, atol=1e-6)


def _seed_with_nonempty_box(grid_h: int, grid_w: int) -> int:
    for seed in range(100):
        torch.manual_seed(seed)
        bbx1, bby1, bbx2, bby2 = sample_mixtoken_box(grid_h, grid_w)
        if (bbx2 - bbx1) * (bby2 - bby1) > 0 and (bbx2 - bbx1, bby2 - bby1) != (grid_h, grid_w):
            return seed
    raise AssertionError("no seed gives a partial box")


def test_mixtoken_mixes_stem_tokens_and_unmixes_aux_logits() -> None:
    model = make(token_label=True).train()
    x = torch.randn(4, 3, 128, 96)  # final grid 4x3
    seed = _seed_with_nonempty_box(4, 3)
    torch.manual_seed(seed)
    cls_logits, aux_logits, box = model(x)

    torch.manual_seed(seed)
    expected_box = sample_mixtoken_box(4, 3)
    stem = model.forward_stem(x)
    feats = model.forward_stages(flip_box_region(stem, expected_box, scale=8))
    assert box == expected_box
    assert torch.allclose(cls_logits, model.forward_head(feats), atol=1e-5)
    assert torch.allclose(aux_logits, unmix_tokens(model.forward_aux(feats), box, (4, 3)), atol=1e-5)
    assert 0 < 1 - mixtoken_lam(box, 12) < 1


def test_mixtoken_is_reproducible_with_torch_seed_only() -> None:
    np_state, py_state = np.random.get_state(), random.getstate()
    torch.manual_seed(7)
    first = [sample_mixtoken_box(7, 7) for _ in range(20)]
    torch.manual_seed(7)
    second = [sample_mixtoken_box(7, 7) for _ in range(20)]
    assert first == second
    assert len(set(first)) > 5
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    for bbx1, bby1, bbx2, bby2 in first:
        assert 0 <= bbx1 <= bbx2 <= 7 and 0 <= bby1 <= bby2 <= 7


def test_flip_box_region_swaps_rows_then_columns_and_is_an_involution() -> None:
    x = torch.arange(3 * 4 * 5).reshape(3, 4, 5, 1).float()  # (B, H, W, C)
    box = (1, 2, 3, 5)  # rows 1..2, columns 2..4
    mixed = flip_box_region(x, box)
    assert torch.equal(mixed[0, 1:3, 2:5], x[2, 1:3, 2:5])
    assert torch.equal(mixed[1, 1:3, 2:5], x[1, 1:3, 2:5])  # middle sample flips onto itself
    assert torch.equal(mixed[0, 0], x[0, 0]) and torch.equal(mixed[0, :, :2], x[0, :, :2])
    assert torch.equal(flip_box_region(mixed, box), x)
    tokens = x.reshape(3, 20, 1)
    assert torch.equal(unmix_tokens(tokens, box, (4, 5)), mixed.reshape(3, 20, 1))
    assert unmix_tokens(tokens, None, (4, 5)) is tokens
    assert mixtoken_lam(box, 20) == pytest.approx(1 - 6 / 20)
    assert mixtoken_lam(None, 20) == 1.0


# -- backbone API ----------------------------------------------------------------------


def test_features_only_returns_four_nchw_stage_maps() -> None:
    model = timm.create_model("rmt_test", features_only=True)
    assert model.feature_info.channels() == [32, 32, 64, 64]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 64, 2, 3)]
    partial = timm.create_model("rmt_test", features_only=True, out_indices=(1, 2))
    assert [tuple(f.shape) for f in partial(torch.randn(1, 3, 64, 64))] == [(1, 32, 8, 8), (1, 64, 4, 4)]


def test_forward_intermediates_agree_with_forward_features() -> None:
    model = make().eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        feats = model.forward_features(x)
    assert len(maps) == 4
    assert torch.equal(final, feats)
    assert torch.equal(maps[-1], feats.permute(0, 3, 1, 2))


def test_forward_head_pre_logits_and_reset_classifier() -> None:
    model = make(token_label=True).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 2, 2, 64)  # NHWC
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.aux_head.out_features == 5
    model.reset_classifier(0)
    assert model.forward_head(feats).shape == (2, model.head_hidden_size)


def test_grad_checkpointing_gives_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_checkpoint = rmt_module.checkpoint
    monkeypatch.setattr(rmt_module, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    x = torch.randn(2, 3, 64, 64)

    def grads(enable: bool) -> dict[str, torch.Tensor]:
        model = make(drop_path_rate=0.3).train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)  # same drop-path draws
        model(x).pow(2).sum().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain = grads(False)
    assert not calls
    checkpointed = grads(True)
    assert len(calls) == 5  # one per block
    for name, g in plain.items():
        assert torch.allclose(checkpointed[name], g, rtol=1e-6, atol=1e-9), name


@pytest.mark.parametrize("stage", [0, 2], ids=["decomposed", "full+layerscale"])
@pytest.mark.parametrize("attn_impl", ["reference", "sdpa"])
def test_block_compiles_with_fullgraph(stage: int, attn_impl: str) -> None:
    torch._dynamo.reset()
    model = make(attn_impl=attn_impl)
    block = model.layers[stage].blocks[0]
    dim = model.arch.embed_dims[stage]
    x = torch.randn(2, 4, 6, dim, requires_grad=True)
    tables = model.layers[stage].stage_tables(x)
    # aot_eager traces forward and backward through dynamo + AOTAutograd (a graph break
    # fails fullgraph) without a C++ build; inductor codegen is the GPU path's concern.
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x, tables)
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    ref = block(x, tables)
    ref.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(grad, x.grad, atol=1e-6)


def test_channels_last_input_and_deepcopy_give_the_same_output() -> None:
    model = make().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(model(x.to(memory_format=torch.channels_last)), ref, atol=1e-6)
        assert torch.equal(copy.deepcopy(model)(x), ref)


def test_meta_init_then_to_empty_and_init_weights() -> None:
    with torch.device("meta"):
        model = timm.create_model("rmt_test", num_classes=10, token_label=True)
    model(torch.empty(1, 3, 64, 64, device="meta"))  # builds meta tables
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert torch.equal(model.layers[2].blocks[0].gamma_1, torch.full((1, 1, 1, 64), 0.1))
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out).all()


def test_attn_impl_is_selectable() -> None:
    model = make(attn_impl="sdpa")
    assert {b.retention.attn_impl for b in model.blocks()} == {"sdpa"}
    model.set_attn_impl("reference")
    assert {b.retention.attn_impl for b in model.blocks()} == {"reference"}
    assert {b.retention.attn_impl for b in make().blocks()} == {"auto"}


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3, 33, 32), (1, 3, 64, 80)])
def test_side_not_multiple_of_32_is_a_clear_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"not a multiple of 32.*resize or crop"):
        make()(torch.randn(*shape))


def test_wrong_channel_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"not \(B, 3, H, W\).*in_chans=4"):
        make()(torch.randn(1, 4, 32, 32))
    assert make(in_chans=1).eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_bad_attention_options_are_clear_errors() -> None:
    with pytest.raises(
        ValueError, match="attn_impl='fast' is unknown; use one of reference, sdpa, flex, auto"
    ):
        make(attn_impl="fast")
    with pytest.raises(
        ValueError, match="attention='swin' is unknown; use one of masa, gmm, vicinity, vanilla"
    ):
        make(attention="swin")
    with pytest.raises(ValueError, match="attn_impl='x' is unknown"):
        make().set_attn_impl("x")
