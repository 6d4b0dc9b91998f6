"""python -m rmt_dist.tokenlabel.generate TRAIN.beton OUT_STORE --teacher NAME [--checkpoint PATH] ...

Runs a teacher over every image of a training beton and stores, per sample, the top-k
class logits and indices at every location of the teacher's final feature map (see
store.py for the layout and disk cost). What the teacher sees (--view, recorded in the
store's meta so the loader maps crops into it, view.py):

    squash        the whole image resized to --img-size x --img-size (aspect not kept)
    center-crop   timm's eval transform with tlt's --crop-pct: short side resized to
                  int(img_size / crop_pct), centre img_size x img_size crop, i.e. the
                  centred square of crop_pct x short side (TokenLabeling's published maps:
                  --teacher dm_nfnet_f6 --pretrained --img-size 576 --view center-crop
                  --crop-pct 1.0, 18x18 maps)

Cost of the paper's teacher: NFNet-F6 at 576 px is 377 GMACs per image (timm dm_nfnet_f6,
torch FlopCounterMode), 9.7e20 FLOP for ImageNet's 1.28 M images: ~900 H100 GPU-hours at
30% of the bf16 peak (an estimate). Importing the published maps instead takes ~20 min
(python -m rmt_dist.tokenlabel.import_tlt). Teacher pixels come from this project's
decoder (one resize of the view box), not PIL's bicubic resize as in tlt: regenerated
maps are close to, not bit-equal with, the published ones.

Distributed: launch with torchrun (or under SLURM with RANK/WORLD_SIZE set); ranks split
the chunks. Resumable: each finished chunk is a file under OUT_STORE/parts/, and a re-run
with the same arguments skips finished chunks; a resumed store keeps the chunk size it was
started with (recorded in parts/; one line says so if --chunk-size differs). Once all
chunks exist, rank 0 writes scores.npy / indices.npy, checks that every sample index has labels and that no cell's
top-k names a class twice (a damaged chunk file is removed and named, for a re-run to
redo), and marks the store complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write
from ..errors import report
from .store import StoreMeta, TokenLabelStoreError, assemble_parts, generation_key, publish_arrays
from .view import TeacherView, TeacherViewError

# torch and the teacher are imported when labelling starts, not at import: `--help` and
# argument errors answer without them (tests replace these two names).


def build_teacher(*args, **kwargs):
    from .teacher import build_teacher as build

    return build(*args, **kwargs)


def per_location_logits(model, x):
    from .teacher import per_location_logits as logits

    return logits(model, x)


def teacher_view(args: argparse.Namespace) -> TeacherView:
    try:
        return TeacherView(
            "squash" if args.view == "squash" else "center_crop",
            args.crop_pct if args.view == "center-crop" else 1.0,
        )
    except TeacherViewError as e:
        raise TokenLabelStoreError(f"--crop-pct: {e}") from None


def _beton_info(beton: Path) -> tuple[int, int]:
    """(num_samples, num_classes) from the beton's meta file."""
    from ..data import read_meta
    from ..data.errors import DataError

    if not beton.is_file():
        raise TokenLabelStoreError(f"beton {str(beton)!r} does not exist")
    try:
        meta = read_meta(beton)
    except DataError as e:
        raise TokenLabelStoreError(str(e)) from None
    return int(meta["num_samples"]), len(meta["classes"])


def _dist() -> tuple[int, int]:
    import torch

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return rank, world


def _barrier(world: int) -> None:
    import torch

    if world > 1:
        torch.distributed.barrier()


def _part(store: Path, chunk: int) -> Path:
    return store / "parts" / f"chunk_{chunk:06d}.npz"


def _chunk_size_file(store: Path) -> Path:
    return store / "parts" / "chunk_size.txt"


def _recorded_chunk_size(store: Path) -> int | None:
    """The chunk size an unfinished store's parts were cut with: its record, or (parts written
    before it was recorded) read off a part: chunk c starts at row c x chunk_size."""
    record = _chunk_size_file(store)
    if record.is_file():
        return int(record.read_text())
    parts = sorted((store / "parts").glob("chunk_*.npz"))
    if not parts:
        return None
    chunk = int(parts[-1].name.split("_")[1].split(".")[0])
    with np.load(parts[-1]) as z:
        rows = z["rows"]
    return int(rows[0]) // chunk if chunk else len(rows)


def _resume_chunk_size(store: Path, requested: int) -> int:
    """Rank 0: the chunk size of this run, recorded in parts/. A resumed store keeps its own:
    finished chunks are numbered by it, so another size would skip rows no part holds."""
    recorded = _recorded_chunk_size(store)
    if recorded is not None and recorded != requested:
        print(
            f"resuming {store} with its chunk size {recorded} (its finished chunks are numbered by it), "
            f"not --chunk-size {requested}; pass --overwrite to start afresh with {requested}"
        )
    chunk = recorded or requested
    if not _chunk_size_file(store).is_file():
        atomic_write(_chunk_size_file(store), f"{chunk}\n")
    return chunk


def view_boxes(view: TeacherView, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """[B, 4] int64 (top, left, height, width) stored-image pixels of the teacher's view.

    One resize of this box to img_size equals timm's eval transform (short side to
    img_size / crop_pct, centre crop img_size) up to pixel rounding.
    """
    r = view.rect(heights, widths)
    h, w = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    top, left = np.round(r[:, 1] * h), np.round(r[:, 0] * w)
    bottom, right = np.round(r[:, 3] * h), np.round(r[:, 2] * w)
    return np.stack([top, left, np.maximum(bottom - top, 1), np.maximum(right - left, 1)], 1).astype(np.int64)


def _batches(images, decoder, rows: np.ndarray, img_size: int, batch_size: int, view: TeacherView):
    """(uint8 NHWC batch, labels) of each image's view resized to img_size, in `rows` order."""
    import torch

    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        boxes = view_boxes(view, images.heights[idx], images.widths[idx])
        out = np.empty((len(idx), img_size, img_size, 3), np.uint8)
        decoder.decode(idx, boxes, np.zeros(len(idx), bool), out)
        yield torch.from_numpy(out), torch.from_numpy(images.labels[idx])


def _label_chunk(model, images, decoder, rows, args, device, mean, std, bar) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        return _label_rows(model, images, decoder, rows, args, device, mean, std, bar)


def _label_rows(model, images, decoder, rows, args, device, mean, std, bar) -> dict[str, np.ndarray]:
    import torch

    scores, idx = [], []
    correct = 0
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    view = teacher_view(args)
    for batch, labels in _batches(images, decoder, rows, args.img_size, args.batch_size, view):
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = per_location_logits(model, x).float()
        top = logits.topk(args.topk, dim=-1)
        scores.append(top.values.half().cpu().numpy())
        idx.append(top.indices.to(torch.int16).cpu().numpy())
        correct += int((logits.mean((1, 2)).argmax(-1).cpu() == labels).sum())
        if bar is not None:
            bar.update(len(batch))
    return {
        "scores": np.concatenate(scores),
        "indices": np.concatenate(idx),
        "rows": np.asarray(rows),
        "correct": np.asarray(correct),
    }


def _consolidate(store: Path, meta: StoreMeta, num_chunks: int) -> float:
    """Parts -> scores.npy / indices.npy; returns the teacher's top-1 accuracy on the labels."""
    correct = [0]

    def count(z) -> None:
        correct[0] += int(z["correct"])

    assemble_parts(
        store,
        meta,
        ((c, _part(store, c)) for c in range(num_chunks)),
        "generation",
        "re-run the same command to label it again",
        count,
    )
    publish_arrays(store)
    StoreMeta(**{**generation_key(meta), "complete": True}).write(store)
    shutil.rmtree(store / "parts", ignore_errors=True)
    return correct[0] / meta.num_samples


def generate(args: argparse.Namespace) -> StoreMeta:
    import torch

    beton, store = Path(args.beton), Path(args.store)
    num_samples, num_classes = _beton_info(beton)
    view = teacher_view(args)
    rank, world = _dist()
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    model = build_teacher(
        args.teacher, args.checkpoint, num_classes, ema=args.ema, pretrained=args.pretrained
    ).to(device)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        probe = per_location_logits(model, torch.zeros(1, 3, args.img_size, args.img_size, device=device))
    from ..data import beton_fingerprint

    meta = StoreMeta(
        teacher=args.teacher,
        teacher_checkpoint=str(args.checkpoint) if args.checkpoint else None,
        img_size=args.img_size,
        topk=args.topk,
        map_h=probe.shape[1],
        map_w=probe.shape[2],
        num_classes=num_classes,
        beton=str(beton),
        beton_fingerprint=beton_fingerprint(beton),
        num_samples=num_samples,
        view=view.to_dict(),
    )
    if args.topk > num_classes:
        raise TokenLabelStoreError(f"--topk {args.topk} exceeds the dataset's {num_classes} classes")
    if rank == 0:
        if (store / "meta.json").is_file():
            old = StoreMeta.read(store)
            if args.overwrite or generation_key(old) != generation_key(meta):
                if not args.overwrite:
                    raise TokenLabelStoreError(
                        f"{str(store)!r} holds a store made with other settings (teacher {old.teacher}, "
                        f"img_size {old.img_size}, topk {old.topk}, view {TeacherView.from_dict(old.view).describe()}, "
                        f"beton {old.beton}); pass --overwrite to replace it"
                    )
                shutil.rmtree(store)
            elif old.complete:
                print(f"token-label store {store} is already complete ({old.num_samples} samples)")
        if not (store / "meta.json").is_file():
            meta.write(store)
        if not StoreMeta.read(store).complete:  # a complete store keeps no parts/
            (store / "parts").mkdir(parents=True, exist_ok=True)
            _resume_chunk_size(store, args.chunk_size)
    _barrier(world)
    if StoreMeta.read(store).complete:
        return StoreMeta.read(store)

    from numba import set_num_threads

    from ..data.decode import BatchDecoder, BetonImages

    images = BetonImages(str(beton))
    set_num_threads(max(1, min(args.workers, len(os.sched_getaffinity(0)))))
    decoder = BatchDecoder(images, args.workers)
    chunk_size = int(_chunk_size_file(store).read_text())  # rank 0's choice, the same on every rank
    num_chunks = -(-num_samples // chunk_size)
    mine = [c for c in range(rank, num_chunks, world) if not _part(store, c).is_file()]
    todo = sum(min(chunk_size, num_samples - c * chunk_size) for c in mine)
    bar = None
    if rank == 0:
        from tqdm import tqdm

        done = num_chunks - len([c for c in range(num_chunks) if not _part(store, c).is_file()])
        print(
            f"token labels: {num_samples} images, {num_chunks} chunks ({done} done), {world} rank(s), "
            f"teacher {args.teacher} at {args.img_size}px -> {meta.map_h}x{meta.map_w} maps, top-{args.topk}"
        )
        bar = tqdm(total=todo, unit="img", desc="rank 0", dynamic_ncols=True)
    t0 = time.time()
    for c in mine:
        rows = np.arange(c * chunk_size, min((c + 1) * chunk_size, num_samples))
        out = _label_chunk(model, images, decoder, rows, args, device, mean, std, bar)
        with atomic_path(_part(store, c), suffix=".npz") as tmp:  # a chunk file exists only when complete
            np.savez(tmp, **out)  # type: ignore[arg-type]  # numpy's stub lets **kwds bind allow_pickle
    if bar is not None:
        bar.close()
    _barrier(world)
    if rank == 0:
        acc = _consolidate(store, meta, num_chunks)
        print(
            f"token-label store {store}: {num_samples} samples complete in {time.time() - t0:.1f}s; "
            f"teacher top-1 on these images (mean over locations): {acc * 100:.2f}%"
        )
    _barrier(world)
    return StoreMeta.read(store)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rmt_dist.tokenlabel.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("beton", help="training .beton (made by rmt_dist.data.convert)")
    p.add_argument("store", help="output store directory, e.g. train.tokenlabel")
    p.add_argument("--teacher", required=True, help="timm model name (RMT models included)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="teacher weights: .safetensors/.pth file, or a run/checkpoint dir of this project",
    )
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="use timm's pretrained weights: downloaded from the Hugging Face hub, so the node needs "
        "internet (or run once where it has, with HF_HOME on a shared file system)",
    )
    p.add_argument(
        "--img-size", type=int, default=224, help="teacher input side (TokenLabeling: 576 for NFNet-F6)"
    )
    p.add_argument(
        "--view",
        choices=("squash", "center-crop"),
        default="squash",
        help="what the teacher sees: the whole image squashed to img_size, or timm's eval centre crop "
        "(TokenLabeling: center-crop)",
    )
    p.add_argument(
        "--crop-pct",
        type=float,
        default=1.0,
        help="center-crop only, tlt/timm meaning: short side resized to img_size / crop_pct, centre "
        "img_size crop (TokenLabeling: 1.0)",
    )
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, len(os.sched_getaffinity(0))))
    p.add_argument(
        "--chunk-size",
        type=int,
        default=4096,
        help="samples per resumable unit; a resumed store keeps the size it was started with",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--overwrite", action="store_true", help="start the store afresh (deletes what STORE holds)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    try:
        generate(args)
    except TokenLabelStoreError as e:
        return report(e)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
