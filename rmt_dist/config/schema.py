"""The typed recipe: one dataclass per section, defaults close to the official RMT-S recipe.

Not equal to it: drop_path_rate 0.1 (RMT-S: 0.15), crop_pct 0.9 (0.875) and precision bf16
(fp16); the shipped recipes set the official values (docs/recipes.md gives each source).

Every field a recipe may set lives here. `load.py` turns YAML + overrides into these
objects and rejects anything not declared; `derive.py` turns a Config into a
DerivedConfig, whose `derived` RunPlan holds the values computed for a launch size.

Frozen: nothing changes a config after validation. Code that needs a variant builds one
with `dataclasses.replace` (or `load_config` with overrides); sequences are tuples.
Keys that were removed are listed in REMOVED_KEYS with the reason and what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Sentinel for values a recipe must provide (no sensible default exists).
REQUIRED: Any = "???"

AttnImpl = Literal["reference", "sdpa", "flex", "auto"]
Attention = Literal["masa", "gmm", "vicinity", "vanilla"]
StrategyName = Literal["ddp", "fsdp", "deepspeed"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ModelConfig:
    name: str = REQUIRED  # a timm registry name, e.g. rmt_s, rmt_l, rmt_test
    num_classes: int = 1000
    drop_path_rate: float = 0.1
    token_label: bool = False  # starred variants: dense aux head + MixToken
    attn_impl: AttnImpl = "auto"
    attention: Attention = "masa"
    grad_checkpointing: bool = False
    compile: bool = False
    channels_last: bool = False
    # Initial weights (a project checkpoint, safetensors, or an official .pth); null = random init.
    init_checkpoint: str | None = None


@dataclass(frozen=True)
class DataConfig:
    train: str = REQUIRED  # path to the training .beton
    val: str | None = None  # path to the validation .beton; null disables eval
    batch_size: int = 128  # per device
    eval_batch_size: int | None = None  # per device; null = 2 x batch_size
    num_workers: int = 10  # per process; capped by the CPUs the process may use
    img_size: int = 224
    crop_pct: float = 0.9  # eval: resize to img_size / crop_pct, center crop img_size
    # Pillow filter of the training crops and RandAugment's affine ops; `random` draws bilinear or
    # bicubic per op and per crop (tlt's train_interpolation='random'; needs augment_order: tlt).
    # The eval resize uses it too (bicubic when `random`).
    interpolation: Literal["bicubic", "bilinear", "random"] = "bicubic"
    scale: tuple[float, ...] = (0.08, 1.0)
    ratio: tuple[float, ...] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    # Where RandAugment runs: batched torch ops on the device (auto on CUDA: the host CPUs
    # then only decode, crop and flip), or in the host decode workers (auto on CPU).
    # Both give bit-identical batches from the same seed.
    randaugment_on: Literal["auto", "host", "device"] = "auto"
    # crop_first: RandomResizedCrop -> flip -> RandAugment on the crop (timm/DeiT, the plain recipes).
    # tlt: flip -> RandAugment on the whole stored image -> RandomResizedCrop, RandAugment's
    # geometric ops also moving the token-label maps (TokenLabeling's create_token_label_transform,
    # tlt/data/label_transforms_factory.py; the starred recipes). RandAugment then runs in the host
    # workers (randaugment_on is ignored).
    augment_order: Literal["crop_first", "tlt"] = "crop_first"
    reprob: float = 0.25
    remode: Literal["pixel", "rand", "const"] = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    repeated_aug: bool = True
    num_repeats: int = 3
    drop_last: bool = True
    stage_dir: str | None = (
        None  # node-local copy of betons + token labels ({node} = node name); data/stage.py
    )


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 5e-4  # per `lr_ref_batch` images; the peak lr is derived from the global batch
    lr_ref_batch: int | None = 512  # null: use `lr` as the peak lr unscaled
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    epochs: int = 300
    warmup_epochs: int = 5
    cooldown_epochs: int = 0  # extra epochs at min_lr after the cosine
    # per_step: the lr changes every optimizer step (warm-up, then a cosine from its end).
    # per_epoch_timm: the official runs' lr, held per epoch with their one-epoch lag
    # (timm CosineLRScheduler stepped at each epoch end; rmt_dist/engine/optim.py).
    schedule: Literal["per_step", "per_epoch_timm"] = "per_step"
    clip_grad: float | None = None  # max global grad norm; null = no clipping
    accum_steps: int = 1


@dataclass(frozen=True)
class EmaConfig:
    enabled: bool = True
    decay: float = 0.99996  # per step at `decay_ref_batch` images; derived for the global batch
    decay_ref_batch: int | None = 512  # null: use `decay` unscaled
    on_cpu: bool = False  # keep the EMA copy in host memory (saves device memory, costs a copy per step)
    every_steps: int = 1


@dataclass(frozen=True)
class TokenLabelConfig:
    enabled: bool = False
    store: str | None = None  # label store made by `python -m rmt_dist.tokenlabel.generate`
    size: int = 7  # token-label grid side at img_size
    cls_weight: float = 1.0
    dense_weight: float = 0.5
    mix_token: bool = True
    ground_truth: bool = False  # mix the ground-truth one-hot into the cls target (official option)
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class StrategyConfig:
    name: StrategyName = "ddp"
    zero_stage: int = 2  # deepspeed only: 1, 2 or 3
    reshard_after_forward: bool = True  # fsdp only
    # BatchNorm2d statistics over every rank's batch (the official runs' SyncBatchNorm), any
    # strategy and backend; false: per-rank statistics, rank 0's running stats broadcast each step
    sync_batchnorm: bool = False
    deepspeed_config: str | None = None  # JSON whose documented keys override the generated config
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl with CUDA, else gloo


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000
    at_epoch_end: bool = True
    keep_last: int = 3
    save_on_signal: bool = True  # SIGTERM/SIGUSR2 (preemption): one coordinated save, then exit
    resume: bool = True  # resume from the newest complete checkpoint in run.dir


@dataclass(frozen=True)
class RunConfig:
    dir: str = REQUIRED
    seed: int = 0
    stop_after_steps: int | None = None  # stop cleanly (with a checkpoint) without changing the schedule
    log_every: int = 50
    eval_every_epochs: int = 1
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops
    tensorboard: bool = True
    reference: str | None = None  # the paper's run to compare with (rmt_dist/reference/official_logs.json)


@dataclass(frozen=True)
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 8  # one task per GPU; 0 for CPU-only jobs
    tasks_per_node: int | None = None  # null: gpus_per_node, or 1 without GPUs
    cpus_per_task: int = 10
    mem: str | None = None  # e.g. "480G"; null: the partition's default
    time: int = 4320  # minutes
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch options
    max_requeues: int = 20
    job_name: str = "rmt-dist"


@dataclass(frozen=True)
class Config:
    """A validated recipe (load_config); `derive(cfg, world_size)` makes the DerivedConfig a run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    tokenlabel: TokenLabelConfig = field(default_factory=TokenLabelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    precision: Precision = "bf16"
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass(frozen=True)
class RunPlan:
    """Values computed from the recipe for a launch size (derive.py); recorded, never set by hand."""

    world_size: int
    global_batch: int  # images per optimizer step across all ranks
    lr: float  # peak lr
    ema_decay: float  # EMA decay per optimizer step


@dataclass(frozen=True, kw_only=True)
class DerivedConfig(Config):
    """A Config with its RunPlan: what the trainer, the launchers and config.yaml hold.

    Only derive() and load_resolved() make one, so code typed DerivedConfig reads
    `cfg.derived.lr` without checking that derive ran."""

    derived: RunPlan


# Keys recipes may no longer set: {dotted key: why it went and what to use instead}.
# load_config refuses them with this text; load_resolved drops them from an older
# config.yaml with a warning, so runs written before the removal still export and evaluate.
REMOVED_KEYS: dict[str, str] = {
    "data.os_cache": "it had no effect: samples are always read through a memory map (the OS page cache), "
    "see rmt_dist/data/loader.py",
    "tokenlabel.teacher": "nothing read it: the teacher is chosen when making the store "
    "(python -m rmt_dist.tokenlabel.generate --teacher NAME)",
    "tokenlabel.teacher_checkpoint": "nothing read it: pass the teacher's weights when making the store "
    "(python -m rmt_dist.tokenlabel.generate --checkpoint PATH)",
    "tokenlabel.teacher_img_size": "nothing read it: set the teacher's input side when making the store "
    "(python -m rmt_dist.tokenlabel.generate --img-size N)",
    "tokenlabel.topk": "nothing read it: set k when making the store (python -m rmt_dist.tokenlabel.generate "
    "--topk K); the trainer reads it from the store",
}
