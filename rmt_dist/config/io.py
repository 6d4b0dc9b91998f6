"""Write the resolved config beside a run, and read it back to an equal object."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from ..atomic import atomic_write
from .load import build
from .schema import Config


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, short lists inline: config.yaml reads like the recipes."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def to_yaml(cfg: Config) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Atomic write, so a crash never leaves a half-written config.yaml."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, to_yaml(cfg))


def load_resolved(path: str | os.PathLike) -> Config:
    """Read a config.yaml written by save_config (derived values included)."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    return build(Config, tree, {}, default_where=str(path))
