"""The shipped recipes carry the official training values (docs/recipes.md gives each source).

Plain models: qhfan/RMT classfication_release/ (main.py defaults, RMT.py constructors) and
the released logs RMT_log/rmt_{t,s,m,l}.txt. Starred models: classification_token_label_release/
on TokenLabeling's tlt, and RMT_log/rmt_{s,m,l}_label.txt. Checked on the resolved recipe
at the official launch size (16 GPUs x 128 = global batch 2048).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rmt_dist.config import derive, load_config
from rmt_dist.engine.optim import build_schedule

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_WORLD = 16  # 2 nodes x 8 GPUs x 128 per GPU: the logs' peak lr 2e-3 = 5e-4 x 2048 / 512

# Drop path is hard-coded in the released constructors (RMT_T3, RMT_S, RMT_M2, RMT_L6), the same
# in both releases; run.sh's --drop-path and configs/RMT/*.py's drop_path=0.1 are never read.
PLAIN = {"rmt_t": 0.1, "rmt_s": 0.15, "rmt_b": 0.4, "rmt_l": 0.5}
STARRED = {"rmt_s": 0.15, "rmt_b": 0.4, "rmt_l": 0.5}


def resolved(recipe: str):
    return derive(load_config(ROOT / "recipes" / recipe), OFFICIAL_WORLD)


def check_shared(cfg) -> None:
    """What both releases share: optimizer, lr and its scaling, warm-up, EMA, augmentation."""
    o = cfg.optim
    assert cfg.data.batch_size * OFFICIAL_WORLD == cfg.derived.global_batch == 2048
    assert (o.name, o.lr, o.lr_ref_batch, o.weight_decay) == ("adamw", 5e-4, 512, 0.05)
    assert cfg.derived.lr == pytest.approx(2e-3)
    assert (tuple(o.betas), o.eps, o.clip_grad, o.accum_steps) == ((0.9, 0.999), 1e-8, None, 1)
    assert (o.warmup_epochs, o.warmup_lr, o.min_lr) == (5, 1e-6, 1e-5)
    assert cfg.ema.enabled and (cfg.ema.decay, cfg.ema.decay_ref_batch, cfg.ema.every_steps) == (
        0.99996,
        512,
        1,
    )
    assert cfg.derived.ema_decay == pytest.approx(0.99996**4)
    d = cfg.data
    assert (cfg.model.num_classes, d.img_size, d.auto_augment) == (1000, 224, "rand-m9-mstd0.5-inc1")
    assert d.scale == (0.08, 1.0) and d.ratio == pytest.approx([3 / 4, 4 / 3]) and d.hflip == 0.5
    assert (d.reprob, d.remode) == (0.25, "pixel")
    assert d.mean == (0.485, 0.456, 0.406) and d.std == (0.229, 0.224, 0.225)


def cosine_over_all_epochs(cfg, epochs: int) -> None:
    """The cosine runs to the last step: no min-lr cool-down tail (both main.py loop --epochs)."""
    sched = build_schedule(cfg, steps_per_epoch=100)
    assert cfg.optim.epochs == epochs and cfg.optim.cooldown_epochs == 0
    assert sched.cosine_end == sched.total_steps == 100 * epochs
    assert sched(sched.total_steps - 100) > 1.001 * cfg.optim.min_lr  # still decaying in the last epoch


@pytest.mark.parametrize("name", PLAIN)
def test_plain_recipe_is_the_official_one(name):
    cfg = resolved(f"{name}.yaml")
    check_shared(cfg)
    assert cfg.model.name == name and not cfg.model.token_label and not cfg.tokenlabel.enabled
    assert cfg.model.drop_path_rate == PLAIN[name]
    cosine_over_all_epochs(cfg, 300)  # RMT_log/rmt_t.txt: 300 epochs, lr 1.02e-5 at the last
    d = cfg.data
    assert (d.crop_pct, d.interpolation) == (0.875, "bicubic")  # datasets.py: Resize(256, bicubic), crop 224
    assert (d.mixup, d.cutmix, d.mixup_prob, d.mixup_switch_prob, d.label_smoothing) == (
        0.8,
        1.0,
        1.0,
        0.5,
        0.1,
    )
    assert d.repeated_aug and d.num_repeats == 3  # main.py --repeated-aug (RASampler, 3 copies)


@pytest.mark.parametrize("name", STARRED)
def test_starred_recipe_is_the_official_one(name):
    cfg = resolved(f"{name}_tokenlabel.yaml")
    check_shared(cfg)
    assert cfg.model.name == name and cfg.model.token_label
    # Issue 15 item 1: the released constructors' values, not the configs' dead 0.1.
    assert cfg.model.drop_path_rate == STARRED[name]
    # Item 2: RMT_log/rmt_*_label.txt run 310 epochs on one cosine (lr 1.02e-5 at epoch 309).
    cosine_over_all_epochs(cfg, 310)
    # Item 3: tlt's loader uses a plain DistributedSampler.
    assert not cfg.data.repeated_aug
    d, t = cfg.data, cfg.tokenlabel
    assert d.crop_pct == 0.96  # main.py build_token_label: eval loader crop_pct=0.96
    assert (d.mixup, d.cutmix) == (0.0, 0.0)  # main.py sets both to 0: MixToken instead
    assert t.enabled and (t.size, t.cls_weight, t.dense_weight) == (7, 1.0, 0.5)
    assert t.mix_token and not t.ground_truth  # TokenLabelCrossEntropy, not the GT variant
    assert t.label_smoothing == 0.1  # main.py --smoothing, passed to create_token_label_target


@pytest.mark.parametrize("name", STARRED)
def test_starred_recipe_changes_only_what_the_token_label_release_changes(name):
    """Against its plain base: the keys that differ are exactly the release's differences
    (plus the data lines of the tlt pipeline: augment order, interpolation)."""
    plain, star = resolved(f"{name}.yaml"), resolved(f"{name}_tokenlabel.yaml")
    changed = {
        f"{section}.{k}"
        for section in ("model", "data", "optim", "ema")
        for k, v in vars(getattr(star, section)).items()
        if getattr(getattr(plain, section), k) != v
    }
    expected = {
        "model.token_label",
        "data.crop_pct",
        "data.mixup",
        "data.cutmix",
        "data.repeated_aug",
        "optim.epochs",
    }
    if STARRED[name] != PLAIN[name]:
        expected.add("model.drop_path_rate")
    pipeline = {"data.augment_order", "data.interpolation"}  # issue 15's tlt transform order
    assert expected <= changed <= expected | pipeline
