"""python -m rmt_dist.tokenlabel.import_tlt LABEL_ROOT TRAIN.beton OUT_STORE [--allow-missing] ...

Imports TokenLabeling's published dense label maps (the NFNet-F6 `label_top5_train_nfnet`
folder the official RMT* runs trained on) into a token-label store for TRAIN.beton.

The published format (zihangJiang/TokenLabeling `generate_label.py`, read back by
`tlt/data/dataset.py`): one file per training image, at
`LABEL_ROOT/<class dir>/<image name up to its first dot>.pt`, written by `torch.save` as a
float16 tensor [2, k, H, W]: [0] the teacher's top-k raw logits (the 1x1-conv head's
output, no softmax), [1] their class indices as float16 (exact integers up to 2048);
k = 5. Made with `--model dm_nfnet_f6 --pretrained --img-size 576 --crop-pct 1.0`: the
teacher saw the short side resized to 576 and the centre 576x576 square, and its stride-32
map is 18x18. tlt's training code scatters the k logits into a dense map that is 0
elsewhere and softmaxes after RoI-align (`tlt/data/mixup.py` get_featuremaps/get_label);
this store keeps the logits verbatim (float16 [H, W, k]) and targets.py does the same
scatter and softmax, so the targets are what tlt computes from the same maps. Unlike tlt,
the store records the view (centre square, view.py) and the crop boxes are mapped into it,
so labels stay aligned on non-square images.

Samples are matched to files through the beton's recorded source paths
(TRAIN.beton.paths.txt, written by rmt_dist.data.convert; older betons: `convert SRC BETON
--record-paths`, or --paths FILE), with tlt's own naming rule. Every file is checked:
shape [2, k, H, W] with the same H, W for all, floating dtype, finite logits, indices
integers in 0..num_classes-1 and distinct within each cell (a repeat would count a class
twice); and the share of images whose most frequent top-1 class is
their beton label must reach --min-agreement (a different class order shows as ~0.1%).
Unusable files are listed (counts by reason, the first ones here, all in
OUT_STORE/problems.tsv: sample, file, reason per row, with backslash, tab, newline and
carriage return in a field written as \\\\, \\t, \\n, \\r, so no file name can split a row)
and the import fails; finished chunks are kept, so a re-run after
fixing the files reads only the rest. --allow-missing instead gives those samples the
ground truth as their map (every location: the label's logit 30, the others 0, i.e. a
one-hot target before smoothing) and lists them in OUT_STORE/fallback.tsv (same format).

Resumable and atomic like the generator: each chunk is a file under OUT_STORE/parts/;
scores.npy / indices.npy are written once every sample has labels, and only then is the
store marked complete.

Cost: ImageNet-1k train is 1,281,167 files of [2, 5, 18, 18] float16 (3,240 data bytes;
8,069 bytes each as torch 2.x saves them, ~10 GB in all); the store is 8.3 GB, and as much
again for parts/ while importing. Reading is file-open bound: measured 990-1,360 files/s
on this project's 2-core dev machine (shared; page cache; bench/tlt_import.py), i.e.
16-22 min for ImageNet. On a network file system each open costs a round trip: more
--workers hide it (default: up to 16); not measured there, plan on up to an hour.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write
from ..errors import report
from .store import (
    StoreMeta,
    TokenLabelStoreError,
    assemble_parts,
    first_repeated_class,
    generation_key,
    one_line,
    publish_arrays,
    read_tsv_field,
    tsv_rows,
)
from .view import TeacherView, TeacherViewError

FALLBACK_LOGIT = 30.0  # softmax over 0s elsewhere: p(label) = 1 - (C - 1) e^-30, one-hot to 1e-10
PROBE_FILES = 32
SHOWN_PROBLEMS = 10


def _paths_digest(rel: list[str]) -> str:
    return hashlib.sha256("\n".join(rel).encode("utf-8", "surrogateescape")).hexdigest()[:16]  # as paths.txt


def tlt_label_path(source_path: str) -> str:
    """tlt's rule: the last two path components, cut at the first dot, + '.pt'.

    `'/'.join(path.split('/')[-2:]).split('.')[0] + '.pt'` (generate_label.py, dataset.py);
    so `n01440764/n01440764_10026.JPEG` -> `n01440764/n01440764_10026.pt`.
    """
    return "/".join(source_path.split("/")[-2:]).split(".")[0] + ".pt"


def _load(path: str):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def read_label_file(
    path: str, topk: int, map_hw: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One published file -> (scores float16 [H, W, k], indices int16 [H, W, k]); ValueError says why not."""
    import torch

    try:
        t = _load(path)
    except FileNotFoundError:
        raise ValueError("missing") from None
    except Exception as e:  # truncated zip, not a torch file, pickle with other objects ...
        raise ValueError(
            f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"wrong type: holds a {type(t).__name__}, expected a tensor")
    want = (2, topk, *map_hw)
    if tuple(t.shape) != want:
        raise ValueError(f"wrong shape: {list(t.shape)}, expected {list(want)}")
    if not t.is_floating_point():
        raise ValueError(f"wrong dtype: {t.dtype}, expected float16")
    scores, idx = t[0].float(), t[1].float()
    if not torch.isfinite(scores).all():
        raise ValueError("bad scores: not all finite")
    bad = (idx != idx.round()) | (idx < 0) | (idx >= num_classes)
    if bad.any():
        v = float(idx[bad][0])
        raise ValueError(f"bad class index: {v:g} is not an integer in 0..{num_classes - 1}")
    indices = idx.permute(1, 2, 0).to(torch.int16).numpy()
    rep = first_repeated_class(indices[None])
    if rep is not None:
        _, y, x, c = rep
        raise ValueError(
            f"repeated class index: cell (row {y}, col {x}) lists class {c} twice in its top-{topk}"
        )
    return t[0].permute(1, 2, 0).to(torch.float16).numpy(), indices


def fallback_map(
    label: int, topk: int, map_hw: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth as a map: distinct indices (label first), logit 30 for the label, 0 for the rest."""
    scores = np.zeros((*map_hw, topk), np.float16)
    scores[..., 0] = FALLBACK_LOGIT
    indices = np.broadcast_to((label + np.arange(topk)) % num_classes, (*map_hw, topk)).astype(np.int16)
    return scores, indices


def _part(store: Path, chunk: int, fallback: bool = False) -> Path:
    return store / "parts" / (f"chunk_{chunk:06d}.fallback.npz" if fallback else f"chunk_{chunk:06d}.npz")


def _done(store: Path, chunk: int) -> bool:
    return _part(store, chunk).is_file() or _part(store, chunk, True).is_file()


def import_chunk(job: dict) -> dict:
    """Read one chunk's files; write its part unless a file is unusable and fallbacks are off."""
    rows, files, labels = job["rows"], job["files"], job["labels"]
    k, hw, c = job["topk"], tuple(job["map_hw"]), job["num_classes"]
    scores = np.empty((len(rows), *hw, k), np.float16)
    indices = np.empty((len(rows), *hw, k), np.int16)
    problems, agree = [], 0
    for i, (f, label) in enumerate(zip(files, labels)):
        try:
            scores[i], indices[i] = read_label_file(f, k, hw, c)
            top1 = np.bincount(indices[i][..., 0].ravel(), minlength=c).argmax()
            agree += int(top1 == label)
        except ValueError as e:
            problems.append((int(rows[i]), f, str(e)))
            scores[i], indices[i] = fallback_map(int(label), k, hw, c)
    if not problems or job["allow_missing"]:
        store = Path(job["store"])
        out = _part(store, job["chunk"], fallback=bool(problems))
        with atomic_path(out, suffix=".npz") as tmp:  # a part exists only when complete
            np.savez(
                tmp,
                rows=rows,
                scores=scores,
                indices=indices,
                agree=np.asarray(agree),
                problems=np.asarray([tsv_rows([p])[:-1] for p in problems], dtype=str),  # escaped rows
            )
    return {"chunk": job["chunk"], "n": len(rows), "problems": problems, "agree": agree}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _beton(beton: Path, paths: str | None) -> tuple[int, int, list[str], np.ndarray]:
    from ..data import read_meta
    from ..data.decode import BetonImages
    from ..data.errors import DataError
    from ..data.sources import read_source_paths

    if not beton.is_file():
        raise TokenLabelStoreError(f"beton {str(beton)!r} does not exist")
    try:
        meta = read_meta(beton)
        rel = read_source_paths(beton, meta, paths)
        labels = BetonImages(str(beton)).labels
    except DataError as e:
        raise TokenLabelStoreError(str(e)) from None
    return int(meta["num_samples"]), len(meta["classes"]), rel, labels


def _probe(files: list[str], topk: int, num_classes: int) -> tuple[int, int]:
    """Map size (H, W): the most common among the first readable files."""
    shapes: Counter[tuple[int, ...]] = Counter()
    first_error = None
    for f in files[:PROBE_FILES]:
        try:
            t = _load(f)
            shapes[tuple(t.shape)] += 1
        except Exception as e:
            first_error = (
                first_error
                or f"{one_line(f)}: {'missing' if isinstance(e, FileNotFoundError) else type(e).__name__}"
            )
    if not shapes:
        raise TokenLabelStoreError(
            f"none of the first {min(PROBE_FILES, len(files))} label files is readable "
            f"(first: {first_error}); check LABEL_ROOT (it holds <class dir>/<image>.pt)"
        )
    shape = shapes.most_common(1)[0][0]
    if len(shape) != 4 or shape[0] != 2 or shape[1] != topk:
        raise TokenLabelStoreError(
            f"label files have shape {list(shape)} (first: {one_line(files[0])}), expected "
            f"[2, {topk}, H, W] (TokenLabeling's format); pass --topk {shape[1] if len(shape) == 4 else 'K'} "
            f"if they hold another k"
        )
    return int(shape[2]), int(shape[3])


def _write_problems(path: Path, problems: list[tuple[int, str, str]]) -> None:
    """sample, file, reason per row; fields escaped (store.tsv_field: any file name keeps one row),
    names that are not UTF-8 written as their bytes."""
    text = "sample\tfile\treason\n" + tsv_rows(sorted(problems))
    atomic_write(path, text.encode("utf-8", "surrogateescape"))


def _report(problems: list[tuple[int, str, str]], total: int) -> str:
    counts = Counter(why.split(":")[0] for _, _, why in problems)
    summary = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    print(f"{len(problems)} of {total} label files unusable ({summary}):")
    for r, f, why in sorted(problems)[:SHOWN_PROBLEMS]:
        print(f"  sample {r}: {one_line(f)}: {one_line(why)}")
    if len(problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
    return summary


def _consolidate(store: Path, meta: StoreMeta, num_chunks: int, min_agreement: float) -> tuple[float, int]:
    """Parts -> scores.npy / indices.npy (+ fallback.tsv); every sample covered, labels agree.

    Returns (share of images whose maps' most frequent top-1 is their label, fallbacks)."""
    agree = [0]
    fallback: list[tuple[str, ...]] = []

    def collect(z) -> None:
        agree[0] += int(z["agree"])
        fallback.extend(tuple(map(read_tsv_field, line.split("\t"))) for line in z["problems"].tolist())

    assemble_parts(
        store,
        meta,
        (
            (c, _part(store, c) if _part(store, c).is_file() else _part(store, c, True))
            for c in range(num_chunks)
        ),
        "the import",
        "re-run the same command to read its files again",
        collect,
    )
    share = agree[0] / max(meta.num_samples - len(fallback), 1)
    if share < min_agreement:  # before publishing anything: a wrong class order must not train
        raise TokenLabelStoreError(
            f"only {share * 100:.1f}% of images have their beton label as the maps' most frequent top-1 class "
            f"(--min-agreement {min_agreement}): the maps' class indices do not follow this beton's class "
            f"order (ImageNet: sorted synset folders) or belong to other images; check LABEL_ROOT and BETON"
        )
    publish_arrays(store)
    if fallback:
        _write_problems(store / "fallback.tsv", [(int(r), f, why) for r, f, why in fallback])
    StoreMeta(**{**generation_key(meta), "complete": True, "fallback_samples": len(fallback)}).write(store)
    shutil.rmtree(store / "parts", ignore_errors=True)
    (store / "problems.tsv").unlink(missing_ok=True)
    return share, len(fallback)


def _key_without_chunk(meta: StoreMeta) -> dict:
    return {**generation_key(meta), "source": (meta.source or "").rpartition(";chunk ")[0]}


def import_tlt(args: argparse.Namespace) -> StoreMeta:
    label_root, beton, store = Path(args.label_root), Path(args.beton), Path(args.store)
    if not label_root.is_dir():
        raise TokenLabelStoreError(
            f"LABEL_ROOT {str(label_root)!r} is not a folder (expected "
            f"LABEL_ROOT/<class dir>/<image>.pt, e.g. label_top5_train_nfnet)"
        )
    try:
        view = TeacherView("center_crop", args.crop_pct).to_dict()
    except TeacherViewError as e:
        raise TokenLabelStoreError(f"--crop-pct: {e}") from None
    num_samples, num_classes, rel, labels = _beton(beton, args.paths)
    if num_classes > 2048:  # float16 holds every integer only up to 2048: indices above it round
        raise TokenLabelStoreError(
            f"{beton} has {num_classes} classes, but TokenLabeling's format stores class indices as float16, "
            "exact only up to 2048: such maps cannot name these classes; generate a store instead "
            "(python -m rmt_dist.tokenlabel.generate)"
        )
    if args.topk > num_classes:
        raise TokenLabelStoreError(f"--topk {args.topk} exceeds the beton's {num_classes} classes")
    names = [tlt_label_path(p) for p in rel]
    dup = [n for n, m in Counter(names).items() if m > 1]
    if dup:
        raise TokenLabelStoreError(
            f"{len(dup)} label files would be shared by several images under tlt's naming "
            f"rule (first: {one_line(dup[0])}); such a beton cannot be matched to TokenLabeling maps"
        )
    files = [str(label_root / n) for n in names]
    map_hw = _probe(files, args.topk, num_classes)
    from ..data import beton_fingerprint

    meta = StoreMeta(
        teacher=args.teacher,
        teacher_checkpoint=None,
        img_size=args.teacher_size,
        topk=args.topk,
        map_h=map_hw[0],
        map_w=map_hw[1],
        num_classes=num_classes,
        beton=str(beton),
        beton_fingerprint=beton_fingerprint(beton),
        num_samples=num_samples,
        view=view,
        # What the parts were matched with: resuming with another path list or chunk size
        # would mix rows matched two ways, so either makes a different store.
        source=f"tlt:{label_root.resolve()};paths sha256:{_paths_digest(rel)};chunk {args.chunk_size}",
    )
    if (store / "meta.json").is_file():
        old = StoreMeta.read(store)
        if args.overwrite or generation_key(old) != generation_key(meta):
            old_chunk = (old.source or "").rpartition(";chunk ")[2]
            same_but_chunk = _key_without_chunk(old) == _key_without_chunk(meta)
            if not args.overwrite and same_but_chunk and old.complete:  # chunks no longer matter
                print(f"token-label store {store} is already complete ({old.num_samples} samples)")
                return old
            if not args.overwrite and same_but_chunk:
                raise TokenLabelStoreError(
                    f"{str(store)!r} is an unfinished import cut into chunks of {old_chunk}, not --chunk-size "
                    f"{args.chunk_size} (finished chunks are numbered by it); resume with --chunk-size {old_chunk}, "
                    f"or pass --overwrite to start afresh"
                )
            if not args.overwrite:
                raise TokenLabelStoreError(
                    f"{str(store)!r} holds a store made from other inputs or settings (source {old.source or old.teacher}, "
                    f"topk {old.topk}, map {old.map_h}x{old.map_w}, beton {old.beton}); pass --overwrite to replace it"
                )
            shutil.rmtree(store)
        elif old.complete:
            print(
                f"token-label store {store} is already complete ({old.num_samples} samples, "
                f"{old.fallback_samples} on ground-truth fallback)"
            )
            return old
    if not (store / "meta.json").is_file():
        meta.write(store)
    (store / "parts").mkdir(parents=True, exist_ok=True)
    if not args.allow_missing:  # chunks that took fallbacks are read again: the files may be fixed now
        for p in (store / "parts").glob("chunk_*.fallback.npz"):
            p.unlink()

    chunk = args.chunk_size
    num_chunks = -(-num_samples // chunk)
    todo = [c for c in range(num_chunks) if not _done(store, c)]
    jobs = (
        {
            "chunk": c,
            "rows": np.arange(c * chunk, min((c + 1) * chunk, num_samples)),
            "files": files[c * chunk : (c + 1) * chunk],
            "labels": labels[c * chunk : (c + 1) * chunk],
            "topk": args.topk,
            "map_hw": map_hw,
            "num_classes": num_classes,
            "store": str(store),
            "allow_missing": args.allow_missing,
        }
        for c in todo
    )
    from tqdm import tqdm

    n_todo = sum(min(chunk, num_samples - c * chunk) for c in todo)
    print(
        f"import: {num_samples} samples, {num_chunks} chunks ({num_chunks - len(todo)} done), maps "
        f"{map_hw[0]}x{map_hw[1]} top-{args.topk} from {label_root}, {args.workers} worker(s)"
    )
    problems: list[tuple[int, str, str]] = []
    t0 = time.time()
    with tqdm(total=n_todo, unit="file", desc="import", dynamic_ncols=True) as bar:

        def done(r: dict) -> None:
            problems.extend(r["problems"])
            bar.update(r["n"])
            if problems:
                bar.set_postfix(unusable=len(problems))

        if args.workers <= 1:
            for job in jobs:
                done(import_chunk(job))
        else:
            with ProcessPoolExecutor(
                args.workers, mp_context=mp.get_context("fork"), initializer=_init_worker
            ) as pool:
                pending = set()
                for job in jobs:  # keep 2 jobs per worker queued, not all (each carries its file list)
                    pending.add(pool.submit(import_chunk, job))
                    if len(pending) >= 2 * args.workers:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in finished:
                            done(f.result())
                for f in pending:
                    done(f.result())
    seconds = time.time() - t0
    if n_todo:
        print(f"read {n_todo} files in {seconds:.1f}s ({n_todo / max(seconds, 1e-9):.0f} files/s)")
    if problems and not args.allow_missing:
        summary = _report(problems, num_samples)
        _write_problems(store / "problems.tsv", problems)
        r, bad_file, why = sorted(problems)[0]
        raise TokenLabelStoreError(
            f"{len(problems)} of {num_samples} label files unusable ({summary}); first: {one_line(bad_file)}: {one_line(why)} (sample {r}); "
            f"all listed in {store / 'problems.tsv'}; fix or restore those files and re-run (finished chunks are "
            f"kept), or pass --allow-missing to train those samples on their ground-truth class"
        )
    if problems:
        _report(problems, num_samples)
    share, fallback = _consolidate(store, meta, num_chunks, args.min_agreement)
    print(
        f"token-label store {store}: {num_samples} samples complete, {fallback} on ground-truth fallback; "
        f"maps' top-1 class = beton label for {share * 100:.2f}% of images"
    )
    return StoreMeta.read(store)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rmt_dist.tokenlabel.import_tlt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "label_root", help="TokenLabeling label folder, e.g. label_top5_train_nfnet (<class dir>/<image>.pt)"
    )
    p.add_argument(
        "beton", help="training .beton made by rmt_dist.data.convert from the same ImageNet train folder"
    )
    p.add_argument("store", help="output store directory, e.g. train.tokenlabel")
    p.add_argument(
        "--paths",
        default=None,
        help="source paths list for a beton converted before paths were recorded (one <class dir>/<file> "
        "per sample, in beton order); default: BETON.paths.txt",
    )
    p.add_argument("--topk", type=int, default=5, help="k of the files (published: 5)")
    p.add_argument(
        "--teacher", default="dm_nfnet_f6", help="recorded in the store's meta (published: dm_nfnet_f6)"
    )
    p.add_argument(
        "--teacher-size",
        type=int,
        default=576,
        help="teacher input side the maps were made at (published: 576)",
    )
    p.add_argument(
        "--crop-pct",
        type=float,
        default=1.0,
        help="tlt's --crop-pct of the maps: the view is the centred square of crop_pct x short side "
        "(published: 1.0)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="import even if some files are missing or unusable: those samples get their ground-truth "
        "class as the map (listed in STORE/fallback.tsv, counted in meta.json)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.5,
        help="least share of images whose maps' most frequent top-1 class is their beton label "
        "(NFNet-F6 on ImageNet train: ~0.9; catches a different class order)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(16, len(os.sched_getaffinity(0))),
        help="reader processes (a network file system wants many)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=4096,
        help="samples per resumable unit; resuming needs the size the import was started with",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start the store afresh (deletes what STORE holds), e.g. after fixing --paths or the label files",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import_tlt(args)
    except TokenLabelStoreError as e:
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
