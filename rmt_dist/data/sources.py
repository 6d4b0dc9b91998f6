"""What to convert: (path, class name) pairs from an ImageFolder root or a `path<TAB>label` list.

Class maps are {name: index}. An ImageFolder's classes are its sub-folder names, sorted
(torchvision's rule, so indices agree with torchvision and timm). A list's labels are
names too, sorted, unless every label is a non-negative integer: then the integer is the
index (ImageNet-style `val.txt` files). `--classes` overrides both with another split's map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

# Extensions torchvision's ImageFolder accepts (case-insensitive); content decides the real format.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    path: str
    label: str  # class name; the class map turns it into an index


def list_image_folder(root: Path) -> list[Sample]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{root}: no class sub-folders found (expected ROOT/<class>/<image>, or pass a `path<TAB>label` list file)"
        )
    samples = []
    for name in classes:
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append(Sample(str(path), name))
    return samples


def list_file(list_path: Path) -> list[Sample]:
    """`path<TAB>label` lines; relative paths are relative to the list file's folder."""
    samples = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1].strip():
            raise DataError(f"{list_path}:{lineno}: expected `path<TAB>label`, got {line!r}")
        path = Path(parts[0])
        if not path.is_absolute():
            path = list_path.parent / path
        samples.append(Sample(str(path), parts[1].strip()))
    if not samples:
        raise DataError(f"{list_path}: the list has no `path<TAB>label` lines")
    return samples


def list_samples(src: Path) -> list[Sample]:
    if src.is_dir():
        return list_image_folder(src)
    if src.is_file():
        return list_file(src)
    raise DataError(
        f"{src}: no such folder or list file (give an ImageFolder root or a `path<TAB>label` file)"
    )


def class_map_from_labels(labels: list[str]) -> dict[str, int]:
    names = sorted(set(labels))
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in sorted(names, key=int)}
    return {n: i for i, n in enumerate(names)}


def load_class_map(path: Path) -> dict[str, int]:
    """A {name: index} JSON, or a beton meta file (its "classes")."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"--classes {path}: cannot read a JSON class map ({e})") from e
    if isinstance(data, dict) and isinstance(data.get("classes"), dict):
        data = data["classes"]
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise DataError(f'--classes {path}: expected {{name: index}} or a .beton.meta.json with "classes"')
    return {str(k): int(v) for k, v in data.items()}


def check_labels(samples: list[Sample], classes: dict[str, int], classes_file: Path) -> None:
    missing = sorted({s.label for s in samples} - classes.keys())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"class {missing[0]!r}{more} is not in the class map {classes_file}; "
            "convert with the matching train split's meta file or fix the folder names"
        )


# --- Each sample's source, recorded beside the beton -----------------------------------
# One relative path per line, in sample order (`OUT.beton.paths.txt`). A separate file, not a
# meta.json list: ImageNet's 1.28 M paths are ~45 MB, and meta.json is parsed by every loader
# and check, which need none of them. meta.json["paths"] records the file's name, line count
# and sha256, so a stale or edited list is refused.

PATHS_SUFFIX = ".paths.txt"


def paths_file(beton: str | Path) -> Path:
    return Path(f"{beton}{PATHS_SUFFIX}")


def relative_source_path(path: str, root: Path) -> str:
    """`<class dir>/<file>` for an ImageFolder root; for a list file, relative to its folder when
    the image lies under it, else the absolute path."""
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return p.resolve().as_posix()


def source_root(src: Path) -> Path:
    return src if src.is_dir() else src.parent


def encode_paths(rel_paths: list[str]) -> bytes:
    return "".join(f"{p}\n" for p in rel_paths).encode("utf-8", "surrogateescape")


def bad_path_reason(rel: str) -> str | None:
    """Names the one-path-per-line list cannot hold (the converter skips them with this reason)."""
    if "\n" in rel or "\r" in rel:
        return "file name contains a line break (cannot be recorded in the paths list)"
    return None


def read_source_paths(beton: str | Path, meta: dict, paths: str | Path | None = None) -> list[str]:
    """The beton's per-sample source paths, checked against meta.json.

    `paths` overrides the recorded file (a list the user supplies for an older beton): one
    path per line, as many lines as the beton has samples.
    """
    import hashlib

    n = int(meta["num_samples"])
    fix = (
        f"re-run python -m rmt_dist.data.convert SRC {beton} --record-paths (writes the list for this "
        f"beton from its unchanged source folder), or pass --paths FILE (one `<class dir>/<file>` per "
        f"sample, in beton order)"
    )
    if paths is None:
        rec = meta.get("paths")
        if not rec:
            raise DataError(
                f"{beton} has no recorded source paths (converted before they were recorded); {fix}"
            )
        path = Path(beton).with_name(rec["file"])
        if not path.is_file():
            raise DataError(f"{path}: source paths list of {beton} is missing; {fix}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise DataError(
                f"{path} does not match the sha256 in {beton}.meta.json (changed after conversion); {fix}"
            )
    else:
        path = Path(paths)
        if not path.is_file():
            raise DataError(f"--paths {path}: no such file")
        data = path.read_bytes()
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n:
        raise DataError(f"{path} lists {len(lines)} paths but {beton} has {n} samples; {fix}")
    return lines
