"""Read rate of TokenLabeling label files through the importer's chunk reader.

    python bench/tlt_import.py [--files 20000] [--workers 2] [--dir /tmp/tlt_bench]

Writes FILES published-format files ([2, 5, 18, 18] float16, torch.save, 1000 classes
over class folders of 1300 like ImageNet) once, then times import_chunk over them with a
process pool, as `python -m rmt_dist.tokenlabel.import_tlt` runs it. The files are fresh,
so this is the page-cache rate (open + unzip + checks), an upper bound for a network FS.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from rmt_dist.tokenlabel import import_tlt as imp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "tlt_bench"))
    a = p.parse_args()
    root = Path(a.dir)
    files, labels = [], []
    rng = np.random.default_rng(0)
    for i in range(a.files):
        c = i // 1300
        f = root / f"n{c:08d}" / f"n{c:08d}_{i}.pt"
        files.append(str(f))
        labels.append(c)
        if not f.is_file():
            f.parent.mkdir(parents=True, exist_ok=True)
            s = np.sort(rng.normal(5, 3, (5, 18, 18)), axis=0)[::-1]
            ix = np.broadcast_to(np.arange(5)[:, None, None] + c, (5, 18, 18))
            torch.save(torch.from_numpy(np.stack([s, ix])).half(), f)
    size = os.path.getsize(files[0])
    store = root / "store"
    (store / "parts").mkdir(parents=True, exist_ok=True)
    jobs = [
        {
            "chunk": j,
            "rows": np.arange(s, min(s + a.chunk_size, a.files)),
            "files": files[s : s + a.chunk_size],
            "labels": np.asarray(labels[s : s + a.chunk_size]),
            "topk": 5,
            "map_hw": (18, 18),
            "num_classes": 1000,
            "store": str(store),
            "allow_missing": False,
        }
        for j, s in enumerate(range(0, a.files, a.chunk_size))
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers, initializer=imp._init_worker) as pool:
        n = sum(r["n"] for r in pool.map(imp.import_chunk, jobs))
    dt = time.perf_counter() - t0
    print(
        f"{n} files ({size} B each) in {dt:.1f}s with {a.workers} workers: {n / dt:.0f} files/s; "
        f"1,281,167 files: {1281167 / (n / dt) / 60:.0f} min"
    )


if __name__ == "__main__":
    main()
