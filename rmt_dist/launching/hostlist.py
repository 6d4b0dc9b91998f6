"""SLURM host lists ("n[1-2],gpu[01-03,07]") -> host names, and the job's first host."""

from __future__ import annotations

import re
import shutil
import subprocess

_GROUP = re.compile(r"([^,\[]+)(?:\[([^\]]+)\])?(?:,|$)")


def expand(nodelist: str) -> list[str]:
    """Pure-Python expansion of a SLURM host list, for when `scontrol` is not at hand
    (e.g. inside a container). Handles prefixes, ranges with zero padding and lists."""
    hosts: list[str] = []
    pos = 0
    while pos < len(nodelist):
        m = _GROUP.match(nodelist, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse SLURM host list {nodelist!r} near position {pos}")
        prefix, ranges = m.group(1), m.group(2)
        if ranges is None:
            hosts.append(prefix)
        else:
            for part in ranges.split(","):
                lo, _, hi = part.partition("-")
                width = len(lo)
                for i in range(int(lo), int(hi or lo) + 1):
                    hosts.append(f"{prefix}{i:0{width}d}")
        pos = m.end()
    return hosts


def hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames` (SLURM's own parser) when available, else `expand`."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()
    return expand(nodelist)
