"""The token-label store: a teacher's top-k score maps for every sample of one .beton.

Layout of a store directory (e.g. `train.tokenlabel/`):

    meta.json      what it was made from: teacher, checkpoint, img_size, topk, map size,
                   num_classes, source beton path + fingerprint + num_samples; `complete`
    scores.npy     float16 [N, H, W, k]  teacher logits of the top-k classes per location
                                         (raw, before softmax; targets.py softmaxes a dense
                                         map that is 0 outside the top-k, as TokenLabeling)
    indices.npy    int16   [N, H, W, k]  their class indices, distinct within each cell (a
                                         repeated index would count its class twice in the
                                         dense target: both writers refuse it,
                                         `first_repeated_class`)
    parts/         per-chunk results while generating (removed once consolidated)
    fallback.tsv   imported stores only, if --allow-missing was used: the samples without a
                   usable label file (sample index, file, reason; fields escaped as
                   `tsv_field` says, so any file name keeps one line)

`meta.json`'s `view` says which region of each image the maps cover (view.py).

Rows are aligned to the beton's sample indices, so the loader gathers labels by the index
FFCV gives each sample; no image bytes are copied. Disk: N x H x W x k x 4 bytes, e.g.
ImageNet-1k (1,281,167 images) with k=5: 7x7 maps (teacher at 224 px) 1.25 GB; 18x18 maps
(NFNet-F6 at 576 px, as in TokenLabeling) 8.3 GB.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import BadInputError


class TokenLabelStoreError(BadInputError, ValueError):
    """A store that is missing, incomplete or made for other data; the message says the fix."""


@dataclass(frozen=True)
class StoreMeta:
    teacher: str
    teacher_checkpoint: str | None
    img_size: int
    topk: int
    map_h: int
    map_w: int
    num_classes: int
    beton: str
    beton_fingerprint: str
    num_samples: int
    complete: bool = False
    # Region of each source image the maps cover (view.py); None = written before views
    # were recorded, which can only be the squashed whole image.
    view: dict | None = None
    # Where the maps came from when not generated here, e.g. "tlt:/data/label_top5_train_nfnet"
    # (import_tlt.py); None = made by generate.py.
    source: str | None = None
    # Samples whose label file was missing or unusable and that were imported with
    # --allow-missing: their maps say "the ground-truth class" at every location (listed with
    # reasons in fallback.tsv). 0 for generated stores.
    fallback_samples: int = 0

    @classmethod
    def read(cls, store: Path) -> StoreMeta:
        path = Path(store) / "meta.json"
        if not path.is_file():
            raise TokenLabelStoreError(
                f"token-label store {str(store)!r} does not exist or has no meta.json; make it with "
                f"python -m rmt_dist.tokenlabel.generate TRAIN.beton {store} --teacher NAME"
            )
        return cls(**json.loads(path.read_text()))

    def write(self, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        atomic_write(store / "meta.json", json.dumps(asdict(self), indent=2) + "\n")


_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def tsv_field(text: str) -> str:
    """One field of problems.tsv / fallback.tsv: backslash, tab, newline and carriage return
    written as \\\\, \\t, \\n, \\r (PostgreSQL's text format), so a file name holding them
    cannot split a row; `read_tsv_field` undoes it. Other characters are kept as they are."""
    return "".join(_TSV_ESCAPES.get(ch, ch) for ch in text)


def read_tsv_field(field: str) -> str:
    return re.sub(r"\\([\\tnr])", lambda m: _TSV_UNESCAPES[m[1]], field)


def one_line(name: str) -> str:
    """A file name as a console or error line can show it: escaped as `tsv_field`, and bytes that
    are not UTF-8 (surrogate-escaped) as \\udcXX instead of failing to print."""
    return tsv_field(name).encode("utf-8", "backslashreplace").decode("utf-8")


def tsv_rows(rows: list[tuple[object, ...]]) -> str:
    return "".join("\t".join(tsv_field(str(v)) for v in row) + "\n" for row in rows)


def first_repeated_class(indices: np.ndarray) -> tuple[int, int, int, int] | None:
    """(sample position, row, col, class) of the first cell of indices [N, H, W, k] whose top-k
    names a class twice, or None. targets.py scatters the k logits into a dense map, so a
    repeat would give that class the sum of two logits: a corrupt file, never a teacher's top-k."""
    ordered = np.sort(np.asarray(indices), axis=-1)
    same = ordered[..., 1:] == ordered[..., :-1]
    repeated = same.any(-1)
    if not repeated.any():
        return None
    n, y, x = (int(v) for v in np.argwhere(repeated)[0])
    return n, y, x, int(ordered[n, y, x, 1:][same[n, y, x]][0])


def image_name(beton: str | Path, sample: int) -> str:
    """Sample `sample` of the beton as a user finds it: its recorded source path if the beton has
    one (rmt_dist.data.convert writes BETON.paths.txt), else just the index."""
    from ..data import read_meta
    from ..data.errors import DataError
    from ..data.sources import read_source_paths

    try:
        return f"sample {sample} ({one_line(read_source_paths(beton, read_meta(beton))[sample])})"
    except (DataError, OSError, IndexError, KeyError, ValueError):
        return f"sample {sample}"


def _refuse_repeated_classes(
    part: Path, rows: np.ndarray, indices: np.ndarray, meta: StoreMeta, rerun: str
) -> None:
    """Stop consolidation at a part whose top-k repeats a class in a cell; the part is removed
    first so that `rerun` makes it again instead of failing on it forever."""
    rep = first_repeated_class(indices)
    if rep is None:
        return
    n, y, x, c = rep
    part.unlink(missing_ok=True)
    raise TokenLabelStoreError(
        f"{image_name(meta.beton, int(rows[n]))}: cell (row {y}, col {x}) of its top-{meta.topk} lists class "
        f"{c} twice ({part.name} is damaged and was removed); {rerun}"
    )


def assemble_parts(
    store: Path,
    meta: StoreMeta,
    parts: Iterable[tuple[int, Path]],
    made_by: str,
    rerun: str,
    on_part: Callable[[Any], None],
) -> None:
    """The chunk parts (chunk number, file) of generate/import_tlt -> STORE/scores.npy.tmp and
    indices.npy.tmp, flushed; every sample index must be covered. `on_part(npz)` reads a part's
    own extra fields; `publish_arrays` renames the arrays into place once the caller's checks pass."""
    shape = (meta.num_samples, meta.map_h, meta.map_w, meta.topk)
    scores = np.lib.format.open_memmap(store / "scores.npy.tmp", mode="w+", dtype=np.float16, shape=shape)
    indices = np.lib.format.open_memmap(store / "indices.npy.tmp", mode="w+", dtype=np.int16, shape=shape)
    seen = np.zeros(meta.num_samples, dtype=bool)
    for c, part in parts:
        if not part.is_file():
            raise TokenLabelStoreError(f"chunk {c} ({part}) is missing after {made_by}; re-run to finish it")
        with np.load(part) as z:
            rows = z["rows"]
            _refuse_repeated_classes(part, rows, z["indices"], meta, rerun)
            scores[rows], indices[rows] = z["scores"], z["indices"]
            seen[rows] = True
            on_part(z)
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise TokenLabelStoreError(
            f"{len(missing)} sample indices have no labels (first: {missing[:5].tolist()})"
        )
    scores.flush()
    indices.flush()


def publish_arrays(store: Path) -> None:
    """scores.npy / indices.npy from what assemble_parts wrote."""
    for name in ("scores.npy", "indices.npy"):
        os.replace(store / f"{name}.tmp", store / name)


def generation_key(meta: StoreMeta) -> dict:
    """What must match for a half-finished store to be resumed instead of rebuilt."""
    d = asdict(meta)
    d.pop("complete")
    d.pop("fallback_samples")
    from .view import TeacherView

    d["view"] = TeacherView.from_dict(d["view"]).to_dict()  # None (older stores) is squash
    return d


class TokenLabelStore:
    """Read-only view of a complete store, checked against the beton it is used with."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        beton: str | os.PathLike | None = None,
        num_classes: int | None = None,
    ):
        self.path = Path(path)
        self.meta = StoreMeta.read(self.path)
        if not self.meta.complete:
            tool = "import_tlt" if (self.meta.source or "").startswith("tlt:") else "generate"
            raise TokenLabelStoreError(
                f"token-label store {str(self.path)!r} is incomplete (its {tool} run was interrupted or failed); "
                f"re-run python -m rmt_dist.tokenlabel.{tool} with the same arguments to finish it"
            )
        if beton is not None:
            from ..data import beton_fingerprint

            fp = beton_fingerprint(beton)
            if fp != self.meta.beton_fingerprint:
                raise TokenLabelStoreError(
                    f"token-label store {str(self.path)!r} was made for {self.meta.beton!r} "
                    f"(fingerprint {self.meta.beton_fingerprint[:12]}), not for {str(beton)!r} "
                    f"(fingerprint {fp[:12]}); generate a store for this beton"
                )
        if num_classes is not None and num_classes != self.meta.num_classes:
            raise TokenLabelStoreError(
                f"token-label store {str(self.path)!r} has {self.meta.num_classes} classes but the model "
                f"has model.num_classes={num_classes}; use a teacher trained on the same classes"
            )
        if self.meta.fallback_samples:
            import logging

            logging.getLogger(__name__).warning(
                "token-label store %s: %d samples had no usable label file (imported with --allow-missing) "
                "and train on their ground-truth class; listed in %s",
                self.path,
                self.meta.fallback_samples,
                self.path / "fallback.tsv",
            )
        self.scores = np.load(self.path / "scores.npy", mmap_mode="r")
        self.indices = np.load(self.path / "indices.npy", mmap_mode="r")
        expected = (self.meta.num_samples, self.meta.map_h, self.meta.map_w, self.meta.topk)
        if self.scores.shape != expected or self.indices.shape != expected:
            raise TokenLabelStoreError(
                f"token-label store {str(self.path)!r} arrays have shape {self.scores.shape}, meta.json "
                f"says {expected}; the store is damaged, regenerate it"
            )

    def __len__(self) -> int:
        return self.meta.num_samples

    def gather(self, sample_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float16, class indices int16), each [B, H, W, k], for beton sample indices."""
        order = np.argsort(sample_indices)  # sorted reads are kinder to the page cache
        rows = np.asarray(sample_indices)[order]
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return np.asarray(self.scores[rows])[inv], np.asarray(self.indices[rows])[inv]
