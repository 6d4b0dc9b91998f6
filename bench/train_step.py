"""Training-step throughput, peak memory and MFU of RMT: `reference` vs the fast path, one run.

    python bench/train_step.py                                  # CUDA: RMT-T/S/B/L, batch 128, bf16
    python bench/train_step.py --models rmt_t --batch-size 8 --steps 3        # CPU smoke run
    python bench/train_step.py --explain --models rmt_test --img-size 64      # graph breaks only

A step = forward + cross-entropy + backward + AdamW, on synthetic images already on the
device (the loader is not measured). Two paths per model, each built fresh:

    reference  attn_impl=reference (the released math: matmul + materialized bias + softmax),
               eager, NCHW input: the baseline of issue 9
    fast       the project's default fast path: attn_impl=auto (sdpa on CUDA, reference on
               CPU), --compile (default: shared-blocks on CUDA, none on CPU), channels_last
               input and conv weights

--compile modes (graph counts: `--count-graphs`, recorded in docs/perf.md):
    blocks         each block compiled alone, as the engine's model.compile does. Dynamo
                   guards on each block's DropPath probability (a distinct float per block),
                   so every block is its own graph: RMT-L 45 graphs, each an inductor compile.
    shared-blocks  as blocks, but drop path keeps its probability in a tensor (same
                   distribution, see StochasticDepth), so the blocks of a stage share one
                   graph: 4 graphs for RMT-T/S, 6 for RMT-B/L (in a layer-scale stage the first
                   block takes bf16 in, the others fp32). The default on CUDA: RMT-L's compile
                   fits a short GPU session.
    model          torch.compile of the whole model: 1 graph, recompiled once on the second
                   step (the stage tables are cached on the first), each a compile of all blocks.

Models are prepared (channels_last, compile mode) by the engine's one preparation
function, rmt_dist.engine.parallel.prepare.prepare_model, and MFU is rmt_dist.engine.perf's
arithmetic: images/s x 6 x MACs per image / peak. MACs are the released code's documented
values at 224 (2.65/4.80/10.41/19.55 G, the figures issue 9's targets use), otherwise
counted with torch.utils.flop_counter on the meta device (perf.count_train_flops). The
peak is --peak-tflops, or else measured here with a large matmul in the compute dtype
(perf.matmul_peak_flops: issue 9 quotes its H200 targets against the ~790 TFLOP/s measured
that way, not the 989 TFLOP/s data sheet of perf.PEAK_FLOPS that training logs use).
CUDA: timed with torch.cuda.synchronize, memory = torch.cuda.max_memory_allocated over
the timed steps. CPU: wall time, memory '-'. A row that runs out of memory prints OOM.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rmt_dist.engine.parallel.prepare import (
    COMPILE_MODES,
    StochasticDepth,  # noqa: F401  (the shared-blocks drop path)
    prepare_model,
)
from rmt_dist.engine.perf import count_train_flops, device_peak_flops, matmul_peak_flops, mfu
from rmt_dist.models.factory import create_model

# MACs at 224x224 of the released code (design.md); flop_counter misses the norms (~0.5%).
KNOWN_MACS_224 = {"rmt_t": 2.65e9, "rmt_s": 4.80e9, "rmt_b": 10.41e9, "rmt_l": 19.55e9}
PATHS = ("reference", "fast")


@dataclass
class Row:
    model: str
    path: str
    status: str = "ok"  # ok | OOM | error: ...
    img_per_s: float = 0.0
    ms_per_step: float = 0.0
    mfu: float | None = None
    peak_mem_gib: float | None = None
    warmup_s: float = 0.0  # the warm-up steps, compile included
    compile: str = "none"
    graphs: int | None = None  # dynamo graphs compiled in the warm-up (None: eager)
    recompiles_timed: int | None = None  # graphs compiled during the timed steps (should be 0)


def unique_graphs() -> int:
    """Graphs dynamo has handed to a backend in this process (torch._dynamo.reset() keeps the count)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="rmt_t,rmt_s,rmt_b,rmt_l")
    p.add_argument("--paths", default="reference,fast", help="which of reference,fast to run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 8 on CPU")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, help="timed steps; default: 20 on CUDA, 3 on CPU")
    p.add_argument("--warmup", type=int, help="untimed steps first (compile); default: 5 on CUDA, 1 on CPU")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="fast path only; default: shared-blocks on CUDA, none on CPU (modes: see above)",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (aot_eager: dynamo + autograd tracing without codegen, for CPU dry runs)",
    )
    p.add_argument(
        "--fast-attn-impl",
        default="auto",
        choices=("auto", "sdpa", "flex", "reference"),
        help="the fast path's MaSA kernel (default auto: sdpa on CUDA, reference on CPU)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fast path: channels_last input and conv weights (default on)",
    )
    p.add_argument(
        "--drop-path-rate",
        type=float,
        help="default: each model's registered (training) rate; 0 makes all blocks one graph per stage",
    )
    p.add_argument(
        "--adamw",
        choices=("single", "foreach", "fused"),
        default="single",
        help="AdamW implementation for both paths; single = the engine's (foreach=False)",
    )
    p.add_argument("--peak-tflops", type=float, help="peak for MFU; default: measured matmul peak")
    p.add_argument("--json", type=Path, help="also write the rows here (rewritten after every row)")
    p.add_argument(
        "--profile",
        type=Path,
        help="write a torch.profiler top-15 (by kernel on CUDA) of the fast step of --profile-models here",
    )
    p.add_argument("--profile-models", default="rmt_l", help="models whose fast step --profile records")
    p.add_argument(
        "--count-graphs",
        action="store_true",
        help="count the graphs each --compile mode makes for 3 training steps (no codegen), then exit",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="print torch._dynamo.explain graph breaks of the fast path's blocks and model, then exit",
    )
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (128 if cuda else 8)
    args.steps = args.steps or (20 if cuda else 3)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.compile = args.compile or ("shared-blocks" if cuda else "none")
    # A whole-model compile recompiles once on its second step (the stage tables get cached).
    args.warmup = (
        args.warmup if args.warmup is not None else (5 if cuda else 1 if args.compile == "none" else 2)
    )
    args.models = args.models.split(",")
    args.paths = args.paths.split(",")
    args.profile_models = args.profile_models.split(",")
    if unknown := [m for m in args.paths if m not in PATHS]:
        p.error(f"--paths {','.join(unknown)} unknown; use reference and/or fast")
    return args


def macs_per_image(name: str, img: int) -> float:
    if img == 224 and name in KNOWN_MACS_224:
        return KNOWN_MACS_224[name]
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
    return count_train_flops(model, img) / 6  # 3 x forward FLOPs = 3 x 2 x MACs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, path: str, args: argparse.Namespace, device: torch.device):
    """(model, callable to run it) for one path; the model is fresh, so no state leaks between rows."""
    torch.manual_seed(0)
    fast = path == "fast"
    attn_impl = args.fast_attn_impl if fast else "reference"
    kwargs = {} if args.drop_path_rate is None else {"drop_path_rate": args.drop_path_rate}
    model = create_model(name, num_classes=1000, attn_impl=attn_impl, **kwargs)
    model.train()
    # The engine's preparation (static-shape per-block compile with one graph allowed per
    # block, or shared graphs per stage; see prepare.py), on the fast path only.
    run = prepare_model(
        model,
        device,
        channels_last=fast and args.channels_last,
        compile=args.compile if fast else "none",
        backend=getattr(args, "compile_backend", "inductor"),
    )
    return model, run


def measure(
    name: str,
    path: str,
    args: argparse.Namespace,
    device: torch.device,
    flops_per_image: float,
    peak: float | None,
) -> Row:
    model, run = build(name, path, args, device)
    adamw = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[
        args.adamw
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **adamw)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    if path == "fast" and args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    bf16 = args.precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(run(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    compiled = path == "fast" and args.compile != "none"
    graphs_before = unique_graphs()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    graphs_warm = unique_graphs()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    img_per_s = args.batch_size / seconds
    if args.profile and path == "fast" and name in args.profile_models:
        try:
            write_profile(
                args.profile,
                step,
                device,
                f"{name} {path} step, batch {args.batch_size}, "
                f"{args.img_size} px, {args.precision}, compile={args.compile}",
            )
        except Exception as e:  # noqa: BLE001  (the timed row stands without its profile)
            print(f"profile of {name} {path} failed: {type(e).__name__}: {e}", file=sys.stderr)
    return Row(
        model=name,
        path=path,
        img_per_s=img_per_s,
        ms_per_step=1000 * seconds,
        mfu=mfu(img_per_s, flops_per_image, peak) if peak else None,
        peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        warmup_s=warmup_s,
        compile=args.compile if path == "fast" else "none",
        graphs=graphs_warm - graphs_before if compiled else None,
        recompiles_timed=unique_graphs() - graphs_warm if compiled else None,
    )


def profile_top(step, device: torch.device, steps: int = 3, top: int = 15) -> dict:
    """torch.profiler over `steps` steps: the `top` kernels by device time (CUDA), or the
    `top` operators by self CPU time (CPU), per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    events = list(prof.key_averages())
    if cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA] or events
        time_of, by = (lambda e: e.self_device_time_total), "kernel, self device time"
    else:
        kernels = [e for e in events if e.device_type == DeviceType.CPU]
        time_of, by = (lambda e: e.self_cpu_time_total), "operator, self CPU time"
    total_us = sum(time_of(e) for e in kernels) or 1.0
    ranked = sorted(kernels, key=time_of, reverse=True)[:top]
    return {
        "by": by,
        "steps": steps,
        "total_ms_per_step": total_us / 1000 / steps,
        "top": [
            {
                "name": e.key,
                "calls_per_step": e.count / steps,
                "ms_per_step": time_of(e) / 1000 / steps,
                "share": time_of(e) / total_us,
            }
            for e in ranked
        ],
    }


def write_profile(out: Path, step, device: torch.device, what: str) -> None:
    result = {"what": what, **profile_top(step, device)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"profile ({result['by']}) of the {what}: {out}", file=sys.stderr)
    for r in result["top"]:
        print(f"  {100 * r['share']:5.1f}%  {r['ms_per_step']:8.2f} ms  {r['name'][:100]}", file=sys.stderr)


def measure_or_report(
    name: str,
    path: str,
    args: argparse.Namespace,
    device: torch.device,
    flops_per_image: float,
    peak: float | None,
) -> Row:
    """One row; running out of memory (also inside a compile) marks the row instead of ending the run."""
    try:
        return measure(name, path, args, device, flops_per_image, peak)
    except torch.OutOfMemoryError:
        row = Row(name, path, status="OOM")
    except Exception as e:  # noqa: BLE001  (one broken row must not cost the rest of a GPU session)
        oom = "out of memory" in str(e).lower()
        row = Row(
            name, path, status="OOM" if oom else f"error: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        )
    finally:
        # The exception's frames held the model and activations; free them before the next row.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[Row]) -> str:
    lines = [
        "| model | path | img/s | ms/step | MFU | peak mem GiB | warm-up s | graphs | img/s vs reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    reference = {r.model: r for r in rows if r.path == "reference" and r.status == "ok"}
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.model} | {r.path} | {r.status} | | | | | | |")
            continue
        ref = reference.get(r.model)
        ratio = f"{r.img_per_s / ref.img_per_s:.2f}x" if ref and r.path != "reference" else "-"
        mfu = "-" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        lines.append(
            f"| {r.model} | {r.path} | {r.img_per_s:.1f} | {r.ms_per_step:.1f} | {mfu} | "
            f"{_fmt(r.peak_mem_gib, '.1f')} | {r.warmup_s:.1f} | {'-' if r.graphs is None else r.graphs} | {ratio} |"
        )
    return "\n".join(lines)


def describe(args: argparse.Namespace, device: torch.device, peak: float | None, peak_source: str) -> str:
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    from rmt_dist.models.masa import resolve_attn_impl

    sheet = device_peak_flops(device)

    fast_impl = f"{args.fast_attn_impl} ({resolve_attn_impl(args.fast_attn_impl, device.type)})"
    channels = "channels_last" if args.channels_last else "NCHW"
    return "\n".join(
        [
            f"- {machine}; torch {torch.__version__}; {args.precision}; batch {args.batch_size}; "
            f"{args.img_size}x{args.img_size}; {args.steps} timed steps after {args.warmup} warm-up; "
            f"AdamW {args.adamw}",
            f"- reference: attn_impl=reference, eager, NCHW; fast: attn_impl={fast_impl}, compile={args.compile} "
            f"({args.compile_backend}), {channels}",
            f"- MFU peak: {_fmt(peak and peak / 1e12, '.3g')} TFLOP/s ({peak_source}; data sheet: "
            f"{_fmt(sheet and sheet / 1e12, '.3g')} TFLOP/s); 6 x MACs per image",
            f"- command: `python bench/train_step.py {' '.join(sys.argv[1:])}`",
        ]
    )


def explain(args: argparse.Namespace, device: torch.device) -> None:
    """Graph breaks dynamo finds in the fast path: one block per stage (what `blocks` compiles) and the model."""
    for name in args.models:
        model, _ = build(name, "fast", argparse.Namespace(**{**vars(args), "compile": "none"}), device)
        x = torch.randn(2, 3, args.img_size, args.img_size, device=device)
        # no_grad: the eager stage runs between explains need no backward (flex has none on CPU).
        bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
        with bf16, torch.no_grad():
            tokens = model.forward_stem(x)
            for i, stage in enumerate(model.stages()):
                tables = stage.stage_tables(tokens)
                report = torch._dynamo.explain(stage.blocks[0])(tokens, tables)
                reasons = "; ".join(str(b.reason).splitlines()[0] for b in report.break_reasons) or "none"
                print(
                    f"{name} stage {i + 1} block: {report.graph_count} graph(s), "
                    f"{report.graph_break_count} break(s): {reasons}"
                )
                tokens = stage(tokens)
            report = torch._dynamo.explain(model)(x)
        reasons = "; ".join(str(b.reason).splitlines()[0] for b in report.break_reasons) or "none"
        print(
            f"{name} whole model: {report.graph_count} graph(s), {report.graph_break_count} break(s): {reasons}"
        )


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, "--peak-tflops"
    else:
        peak, source = matmul_peak_flops(device, dtype), f"measured, {dtype} matmul"
    rows = []
    for name in args.models:
        flops = 6 * macs_per_image(name, args.img_size)
        for path in args.paths:
            torch._dynamo.reset()  # every model compiles from scratch, as in a training run
            row = measure_or_report(name, path, args, device, flops, peak)
            print(json.dumps(asdict(row)), file=sys.stderr, flush=True)  # progress on long GPU runs
            rows.append(row)
            if args.json:  # after every row: a run stopped by a time limit keeps what it measured
                write_rows(args.json, rows)
    return rows, describe(args, device, peak, source)


def write_rows(out: Path, rows: list[Row]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    tmp.replace(out)


def count_graphs(
    args: argparse.Namespace, modes: tuple[str, ...] = ("blocks", "shared-blocks", "model"), steps: int = 3
) -> list[dict]:
    """Graphs (and recompiles) each compile mode makes over `steps` training steps of the fast path,
    with a backend that only counts: what inductor would have to compile, at no codegen cost."""
    device = torch.device(args.device)
    results = []
    for name in args.models:
        for mode in modes:
            torch._dynamo.reset()
            per_step = []

            def counting_backend(gm, example_inputs):
                return gm.forward

            ns = argparse.Namespace(**{**vars(args), "compile": mode, "compile_backend": counting_backend})
            model, run = build(name, "fast", ns, device)
            before = unique_graphs()  # the counter outlives torch._dynamo.reset()
            x = torch.randn(2, 3, args.img_size, args.img_size, device=device)
            y = torch.randint(0, 1000, (2,), device=device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for _ in range(steps):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    loss = F.cross_entropy(run(x), y)
                loss.backward()
                per_step.append(unique_graphs() - before)
            row = {
                "model": name,
                "compile": mode,
                "blocks": len(list(model.blocks())),
                "graphs_after_steps": per_step,
                "graphs": per_step[-1],
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.explain:
        explain(args, torch.device(args.device))
        return
    if args.count_graphs:
        results = count_graphs(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        return
    rows, header = run(args)
    print(header + "\n\n" + format_table(rows))


if __name__ == "__main__":
    main()
