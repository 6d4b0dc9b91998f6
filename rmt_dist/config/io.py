"""Write the resolved config beside a run, and read it back to an equal object."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import yaml

from ..atomic import atomic_write
from .errors import ConfigError
from .load import build
from .schema import REMOVED_KEYS, Config, DerivedConfig

log = logging.getLogger(__name__)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, short sequences inline: config.yaml reads like the recipes."""


def _flow_sequence(dumper: yaml.SafeDumper, value: list | tuple) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


_Dumper.add_representer(list, _flow_sequence)
_Dumper.add_representer(tuple, _flow_sequence)  # the frozen config's sequences; read back as lists


def to_yaml(cfg: Config) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Atomic write, so a crash never leaves a half-written config.yaml."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, to_yaml(cfg))


def _drop_removed_keys(tree: dict, where: str) -> None:
    """A config.yaml written before a key was removed still loads: the key goes, with a warning."""
    for key, why in REMOVED_KEYS.items():
        section, name = key.split(".")
        if isinstance(tree.get(section), dict) and name in tree[section]:
            del tree[section][name]
            log.warning("%s: ignoring %s (removed: %s)", where, key, why)


def load_resolved(path: str | os.PathLike) -> DerivedConfig:
    """Read a config.yaml written by a run (save_config / `to_yaml` of a DerivedConfig)."""
    where = str(path)
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("derived"), dict):
        raise ConfigError(
            f"{where}: has no derived section, so it was not written by a run "
            "(a run's config.yaml records its world size, global batch, peak lr and EMA decay)"
        )
    _drop_removed_keys(tree, where)
    return build(DerivedConfig, tree, {}, default_where=where)
