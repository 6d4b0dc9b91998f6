"""The typed recipe: one dataclass per section, defaults close to the official RMT-S recipe.

Not equal to it: drop_path_rate 0.1 (RMT-S: 0.15), crop_pct 0.9 (0.875) and precision bf16
(fp16); the shipped recipes set the official values (docs/recipes.md gives each source).

Every field a recipe may set lives here. `load.py` turns YAML + overrides into these
objects and rejects anything not declared; `derive.py` fills `Config.derived`.
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


@dataclass
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


@dataclass
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
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333333333333])
    hflip: float = 0.5
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
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
    os_cache: bool = True  # FFCV: rely on the page cache (dataset fits in RAM) vs. its own process cache
    stage_dir: str | None = None  # node-local copy of betons + token labels ({node} = node name); data/stage.py


@dataclass
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 5e-4  # per `lr_ref_batch` images; the peak lr is derived from the global batch
    lr_ref_batch: int | None = 512  # null: use `lr` as the peak lr unscaled
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    epochs: int = 300
    warmup_epochs: int = 5
    cooldown_epochs: int = 0  # extra epochs at min_lr after the cosine
    clip_grad: float | None = None  # max global grad norm; null = no clipping
    accum_steps: int = 1


@dataclass
class EmaConfig:
    enabled: bool = True
    decay: float = 0.99996  # per step at `decay_ref_batch` images; derived for the global batch
    decay_ref_batch: int | None = 512  # null: use `decay` unscaled
    on_cpu: bool = False  # keep the EMA copy in host memory (saves device memory, costs a copy per step)
    every_steps: int = 1


@dataclass
class TokenLabelConfig:
    enabled: bool = False
    store: str | None = None  # label store made by `python -m rmt_dist.tokenlabel.generate`
    size: int = 7  # token-label grid side at img_size
    cls_weight: float = 1.0
    dense_weight: float = 0.5
    mix_token: bool = True
    ground_truth: bool = False  # mix the ground-truth one-hot into the cls target (official option)
    label_smoothing: float = 0.1
    # Generation (the teacher that makes the store).
    teacher: str | None = None  # timm model name
    teacher_checkpoint: str | None = None
    teacher_img_size: int = 224
    topk: int = 5


@dataclass
class StrategyConfig:
    name: StrategyName = "ddp"
    zero_stage: int = 2  # deepspeed only: 1, 2 or 3
    reshard_after_forward: bool = True  # fsdp only
    deepspeed_config: str | None = None  # JSON whose documented keys override the generated config
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl with CUDA, else gloo


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    at_epoch_end: bool = True
    keep_last: int = 3
    save_on_signal: bool = True  # SIGTERM/SIGUSR2 (preemption): one coordinated save, then exit
    resume: bool = True  # resume from the newest complete checkpoint in run.dir


@dataclass
class RunConfig:
    dir: str = REQUIRED
    seed: int = 0
    stop_after_steps: int | None = None  # stop cleanly (with a checkpoint) without changing the schedule
    log_every: int = 50
    eval_every_epochs: int = 1
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops
    tensorboard: bool = True
    reference: str | None = None  # the paper's run to compare with (rmt_dist/reference/official_logs.json)


@dataclass
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


@dataclass
class Derived:
    """Values computed from the others at launch (derive.py); recorded, never set by hand."""

    world_size: int | None = None
    global_batch: int | None = None
    lr: float | None = None  # peak lr
    ema_decay: float | None = None


@dataclass
class Config:
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
    derived: Derived = field(default_factory=Derived)
