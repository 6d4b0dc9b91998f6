"""Training-step throughput and memory of RMT variants x MaSA kernels, side by side.

    python bench/model.py                                    # CPU: rmt_t, reference/sdpa/auto
    python bench/model.py --variants rmt_t,rmt_s --batch 32 --steps 10 --rounds 5
    python bench/model.py --device cuda                      # CUDA: bf16 autocast + torch.compile, + flex
    python bench/model.py --kernels --impls reference,sdpa   # the attention kernels alone, per stage
    python bench/model.py --attentions masa,vanilla,gmm,vicinity --impls auto   # the spatial-prior ablation

One subprocess per variant builds the model once and switches `attn_impl` between
timed blocks of `--steps` steps, alternating the order each round, so every kernel sees
the same machine state; the table gives each kernel's median block (shared machines are
noisy; ratios within one table are what to read). A step = forward + cross-entropy +
backward + AdamW. Memory: CUDA peak allocated per kernel; on CPU, where the allocator
keeps no peak, the bytes autograd saves for backward in one step (activations).
`--attentions` runs each variant once per token mixer (model.attention; one subprocess
each); `vs masa` compares a mixer with MaSA at the same variant and kernel. gmm and
vicinity have one kernel each, so `--impls auto` is enough for them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date


def _worker(args: argparse.Namespace, impls: list[str]) -> list[dict]:
    import timm
    import torch

    import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model(
        args.variant,
        num_classes=1000,
        attn_impl=impls[0],
        attention=args.attention,
        token_label=args.token_label,
        drop_path_rate=0.1,
    ).to(device)
    model.train()
    stepped = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    cuda = device.type == "cuda"

    def loss_of_step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
            out = stepped(x)
            if isinstance(out, tuple):  # token label: cls + dense (targets repeated per token)
                cls_logits, aux, _ = out
                dense = torch.nn.functional.cross_entropy(
                    aux.flatten(0, 1), y.repeat_interleave(aux.shape[1])
                )
                return torch.nn.functional.cross_entropy(cls_logits, y) + 0.5 * dense
            return torch.nn.functional.cross_entropy(out, y)

    def step() -> None:
        loss_of_step().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def saved_mib() -> float:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_of_step()
        loss.backward()
        optimizer.zero_grad(set_to_none=True)
        return sum(storages.values()) / 2**20

    blocks: dict[str, list[float]] = {impl: [] for impl in impls}
    memory: dict[str, float] = {}
    for impl in impls:  # warm-up (and compile) every kernel first
        model.set_attn_impl(impl)
        for _ in range(args.warmup):
            step()
        memory[impl] = 0.0 if cuda else saved_mib()
    for round_index in range(args.rounds):
        for impl in impls if round_index % 2 == 0 else list(reversed(impls)):
            model.set_attn_impl(impl)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
                memory[impl] = max(memory[impl], torch.cuda.max_memory_allocated() / 2**20)
            blocks[impl].append((time.perf_counter() - start) / args.steps)
    return [
        {
            "variant": args.variant,
            "attention": args.attention,
            "impl": impl,
            "ms_per_step": 1000 * statistics.median(blocks[impl]),
            "img_per_s": args.batch / statistics.median(blocks[impl]),
            "memory_mib": memory[impl],
        }
        for impl in impls
    ]


def _kernel_shapes(
    variant: str, batch: int, img: int
) -> list[tuple[str, tuple[int, int, int, int], int | None]]:
    """(label, (batch', heads, L, d), grid width for the 2-D decay or None) per attention call."""
    from rmt_dist.models import ARCHS

    arch = ARCHS[variant]
    calls = []
    for i, (dim, heads) in enumerate(zip(arch.embed_dims, arch.num_heads)):
        side = img // (4 * 2**i)
        head_dim = dim // heads
        if arch.decomposed[i]:
            calls.append(
                (f"stage {i + 1} decomposed (per row/column)", (batch * side, heads, side, head_dim), None)
            )
        else:
            calls.append((f"stage {i + 1} full", (batch, heads, side * side, head_dim), side))
    return calls


def _kernels(args: argparse.Namespace, impls: list[str]) -> str:
    """Forward+backward time of the attention kernels alone, per stage shape, best of rounds."""
    import torch

    from rmt_dist.models.masa import BIAS_KERNELS, attend_flex, decay_score_mod_1d, decay_score_mod_2d
    from rmt_dist.models.tables import head_decays

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    lines = [
        "| attention call | shape (batch', heads, L, d) | "
        + " | ".join(f"{i} ms" for i in impls)
        + " | "
        + " | ".join(f"{i} vs reference" for i in impls if i != "reference")
        + " |",
        "|---|---|" + "---:|" * (2 * len(impls) - 1),
    ]
    for variant in args.variants.split(","):
        for label, shape, width in _kernel_shapes(variant, args.batch, args.img):
            heads, length = shape[1], shape[2]
            q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            decay = head_decays(heads, 2, 4).to(device)
            index = torch.arange(length, device=device)
            if width is None:
                dist = (index[:, None] - index[None, :]).abs()
                score_mod = decay_score_mod_1d(decay)
            else:
                dist = (index[:, None] // width - index[None, :] // width).abs() + (
                    index[:, None] % width - index[None, :] % width
                ).abs()
                score_mod = decay_score_mod_2d(decay, width)
            bias = (dist * decay[:, None, None]).to(dtype)
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for impl in impls:
                    if impl == "flex":
                        fn = lambda: attend_flex(q, k, v, score_mod, shape[-1] ** -0.5)  # noqa: B023
                    else:
                        fn = lambda: BIAS_KERNELS[impl](q, k, v, bias, shape[-1] ** -0.5)  # noqa: B023
                    for _ in range(args.warmup):
                        fn().sum().backward()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        fn().sum().backward()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    best[impl] = min(best.get(impl, float("inf")), (time.perf_counter() - start) / args.steps)
            ratios = [f"{best['reference'] / best[i]:.2f}x" for i in impls if i != "reference"]
            lines.append(
                f"| {variant} {label} | {tuple(shape)} | "
                + " | ".join(f"{1000 * best[i]:.2f}" for i in impls)
                + " | "
                + " | ".join(ratios)
                + " |"
            )
    return "\n".join(lines)


def _run_variant(
    args: argparse.Namespace, variant: str, impls: list[str], attention: str = "masa"
) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--impls", ",".join(impls)]
    cmd += ["--attention", attention]
    for name in ("device", "precision", "batch", "img", "steps", "warmup", "rounds"):
        cmd += [f"--{name}", str(getattr(args, name))]
    cmd.append("--compile" if args.compile else "--no-compile")
    if args.token_label:
        cmd.append("--token-label")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return [
            {"variant": variant, "attention": attention, "impl": impl, "error": tail[0]} for impl in impls
        ]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _header(args: argparse.Namespace, what: str) -> str:
    import torch

    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"{_cpu_name()}, {os.cpu_count()} CPUs"
    )
    return "\n".join(
        [
            f"- {what}; {date.today().isoformat()}; {device}; torch {torch.__version__}; "
            f"precision {args.precision}, compile {args.compile}, batch {args.batch}, {args.img}x{args.img}, "
            f"{args.steps} timed steps (+{args.warmup} warm-up) per block, median of {args.rounds} rounds",
            f"- command: `python bench/model.py {' '.join(sys.argv[1:])}`",
        ]
    )


def _table(args: argparse.Namespace, results: list[dict]) -> str:
    memory = "peak allocated MiB" if args.device == "cuda" else "saved activations MiB"
    lines = [
        _header(args, "training step: forward + cross-entropy + backward + AdamW"),
        "",
        f"| variant | attention | attn_impl | img/s | ms/step (median) | vs reference | vs masa | {memory} |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    ok = [r for r in results if "error" not in r]
    reference = {(r["variant"], r["attention"]): r for r in ok if r["impl"] == "reference"}
    masa = {(r["variant"], r["impl"]): r for r in ok if r["attention"] == "masa"}
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['variant']} | {r['attention']} | {r['impl']} | error: {r['error'][:80]} | | | | |"
            )
            continue
        ref = reference.get((r["variant"], r["attention"]))
        ratio = f"{r['img_per_s'] / ref['img_per_s']:.2f}x" if ref else "-"
        base = masa.get((r["variant"], r["impl"]))
        vs_masa = f"{r['img_per_s'] / base['img_per_s']:.2f}x" if base else "-"
        lines.append(
            f"| {r['variant']} | {r['attention']} | {r['impl']} | {r['img_per_s']:.1f} | {r['ms_per_step']:.0f} | "
            f"{ratio} | {vs_masa} | {r['memory_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default="rmt_t")
    parser.add_argument("--impls", default=None, help="default: reference,sdpa,auto (+flex on cuda)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--precision", default=None, choices=("fp32", "bf16"), help="default: fp32 cpu, bf16 cuda"
    )
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for cuda"
    )
    parser.add_argument("--token-label", action="store_true")
    parser.add_argument(
        "--attentions", default="masa", help="token mixers (model.attention), e.g. masa,vanilla,gmm,vicinity"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernels", action="store_true", help="time the attention kernels alone (fwd+bwd)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--attention", default="masa", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.compile = cuda if args.compile is None else args.compile
    impls = (args.impls or ("reference,sdpa,flex,auto" if cuda else "reference,sdpa,auto")).split(",")
    if args.worker:
        print(json.dumps(_worker(args, impls)))
        return
    if args.kernels:
        if not cuda and "flex" in impls:
            sys.exit("flex has no backward on CPU; drop it from --impls for --kernels on CPU")
        kernel_impls = ["reference"] + [i for i in impls if i not in ("reference", "auto")]
        print(_header(args, "attention kernels alone, forward+backward") + "\n")
        print(_kernels(args, kernel_impls))
        return
    results = []
    for variant in args.variants.split(","):
        for attention in args.attentions.split(","):
            rows = _run_variant(args, variant, impls, attention)
            print(json.dumps(rows), file=sys.stderr, flush=True)
            results += rows
    print(_table(args, results))


if __name__ == "__main__":
    main()
