"""RMT against the released code (qhfan/RMT): sizes, MACs, checkpoint names, logits.

Fixtures (data, generated once from the released code in a scratch directory):
- fixtures/rmt_official_state_dict.json.gz: state-dict key -> shape of the released
  RMT-T, RMT-S*, RMT-B*, RMT-L*, plus the values of their `Relpos.angle/decay` buffers.
- fixtures/rmt_test_official_logits.json: logits of the released `VisRetNet` built with
  rmt_test's hyper-parameters, loaded with `deterministic_fill` weights, on
  `deterministic_input` images (fp32, eval).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.models import checkpoint_filter_fn
from rmt_dist.models.tables import head_decays, rotary_angles

FIXTURES = Path(__file__).parent / "fixtures"

PARAMS = {
    ("rmt_t", False): 14_334_216,
    ("rmt_s", False): 26_967_240,
    ("rmt_b", False): 54_154_896,
    ("rmt_l", False): 95_464_864,
    ("rmt_s", True): 27_480_240,
    ("rmt_b", True): 54_667_896,
    ("rmt_l", True): 96_105_864,
}
GMACS_224 = {"rmt_t": 2.65, "rmt_s": 4.80, "rmt_b": 10.41, "rmt_l": 19.55}


def deterministic_fill(model: torch.nn.Module) -> None:
    """Fill every float tensor of the state dict from a formula (no RNG): sane magnitudes."""
    with torch.no_grad():
        for i, (name, t) in enumerate(sorted(model.state_dict().items())):
            if not t.is_floating_point():
                continue
            wave = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.7853 + i * 1.3).reshape(t.shape)
            if name.endswith("running_var"):
                value = 1.0 + 0.5 * wave.abs()
            elif name.endswith("running_mean"):
                value = 0.1 * wave
            elif t.ndim == 1 and name.endswith("weight"):  # norm scales
                value = 1.0 + 0.1 * wave
            elif t.ndim == 1:  # biases
                value = 0.02 * wave
            else:
                value = wave / math.sqrt(t.numel() / t.shape[0])
            t.copy_(value.to(t.dtype))


def deterministic_input(shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.1).reshape(shape).float()


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize(("name", "token_label"), list(PARAMS))
def test_parameter_count_equals_release(name: str, token_label: bool) -> None:
    model = _meta_model(name, num_classes=1000, token_label=token_label)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[(name, token_label)]


@pytest.mark.parametrize("name", list(GMACS_224))
def test_macs_at_224_within_one_percent(name: str) -> None:
    model = _meta_model(name, attn_impl="reference").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    gmacs = counter.get_total_flops() / 2e9
    assert gmacs == pytest.approx(GMACS_224[name], rel=0.01)


def _official_fixture() -> dict:
    with gzip.open(FIXTURES / "rmt_official_state_dict.json.gz", "rt") as f:
        return json.load(f)["variants"]


def _official_state_dict(entry: dict, device: str) -> dict[str, torch.Tensor]:
    sd = {k: torch.zeros(shape, device=device) for k, shape in entry["shapes"].items() if ".Relpos." not in k}
    sd.update({k: torch.tensor(v) for k, v in entry["relpos_values"].items()})
    return sd


@pytest.mark.parametrize("variant", ["rmt_t", "rmt_s*", "rmt_b*", "rmt_l*"])
def test_released_state_dict_loads_strict(variant: str) -> None:
    entry = _official_fixture()[variant]
    model = _meta_model(entry["model"], token_label=entry["token_label"])
    sd = checkpoint_filter_fn({"model": _official_state_dict(entry, "meta")}, model)
    ours = model.state_dict()
    assert sorted(sd) == sorted(ours)
    assert {k: list(v.shape) for k, v in sd.items()} == {k: list(v.shape) for k, v in ours.items()}
    model.load_state_dict(sd, strict=True)
    # Every released key is either ours or a recomputed Relpos buffer.
    dropped = set(entry["shapes"]) - set(ours)
    assert dropped and all(".Relpos." in k for k in dropped)


def test_recomputed_relpos_equals_released_buffers() -> None:
    entry = _official_fixture()["rmt_l*"]
    model = _meta_model("rmt_l")
    for i, stage in enumerate(model.stages()):
        cache = stage.tables
        angle = torch.tensor(entry["relpos_values"][f"layers.{i}.Relpos.angle"])
        decay = torch.tensor(entry["relpos_values"][f"layers.{i}.Relpos.decay"])
        assert torch.equal(rotary_angles(cache.head_dim), angle)
        assert torch.equal(head_decays(cache.num_heads, cache.init_value, cache.heads_range), decay)


def test_checkpoint_of_another_variant_is_rejected() -> None:
    entry = _official_fixture()["rmt_b*"]
    model = _meta_model("rmt_l", token_label=True)
    with pytest.raises(ValueError, match="different RMT variant"):
        checkpoint_filter_fn({"model": _official_state_dict(entry, "meta")}, model)


def _release_style_checkpoint(model: torch.nn.Module) -> dict:
    """What the released training script saves: DDP-prefixed weights + Relpos buffers, wrapped."""
    weights = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    for i, stage in enumerate(model.stages()):
        c = stage.tables
        weights[f"module.layers.{i}.Relpos.angle"] = rotary_angles(c.head_dim)
        weights[f"module.layers.{i}.Relpos.decay"] = head_decays(c.num_heads, c.init_value, c.heads_range)
    return {"model": weights, "optimizer": {}, "epoch": 299}


def test_converted_checkpoint_round_trip_through_timm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("rmt_test", num_classes=10, token_label=True).eval()
    deterministic_fill(source)
    path = tmp_path / "rmt_test_release.pth"
    torch.save(_release_style_checkpoint(source), path)
    loaded = timm.create_model(
        "rmt_test",
        pretrained=True,
        num_classes=10,
        token_label=True,
        pretrained_cfg_overlay=dict(file=str(path)),
    ).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = deterministic_input((2, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_starred_weights_load_into_plain_model_without_aux_head() -> None:
    starred = timm.create_model("rmt_test", num_classes=10, token_label=True)
    plain = timm.create_model("rmt_test", num_classes=10)
    sd = checkpoint_filter_fn(_release_style_checkpoint(starred), plain)
    assert not any(k.startswith("aux_head.") for k in sd)
    plain.load_state_dict(sd, strict=True)


def _golden_cases() -> list[dict]:
    return json.loads((FIXTURES / "rmt_test_official_logits.json").read_text())["cases"]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(
    ("attn_impl", "token_label"),
    # flex runs eagerly on CPU (slow to start); one case covers its score_mod.
    [("reference", False), ("sdpa", False), ("reference", True), ("sdpa", True), ("flex", True)],
)
def test_logits_equal_released_implementation(attn_impl: str, token_label: bool) -> None:
    model = timm.create_model("rmt_test", num_classes=10, token_label=token_label, attn_impl=attn_impl).eval()
    deterministic_fill(model)
    cases = [c for c in _golden_cases() if c["token_label"] == token_label]
    assert len(cases) == 3
    for case in cases:
        with torch.no_grad():
            logits = model(deterministic_input(tuple(case["input_shape"])))
        expected = torch.tensor(case["logits"])
        # 1e-4 of the logit scale (the small 32x32 logits would make an absolute 1e-4 vacuous).
        tolerance = 1e-4 * max(expected.abs().max().item(), 1e-2)
        assert (logits - expected).abs().max().item() <= tolerance, case["input_shape"]


@pytest.mark.parametrize(
    ("name", "token_label", "crop_pct"), [("rmt_t", False, 0.875), ("rmt_s", True, 0.96)]
)
def test_pretrained_cfg_metadata(name: str, token_label: bool, crop_pct: float) -> None:
    cfg = _meta_model(name, token_label=token_label).pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == crop_pct
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["classifier"] == "head" and cfg["first_conv"] == "patch_embed.proj.0"
