"""Recipe files -> Config: `base:` inheritance, key=value overrides, typed validation.

A recipe is YAML whose top-level keys are Config's sections. `base: other.yaml` (or a
list, merged left to right) is resolved relative to the recipe's folder and deep-merged
under the recipe's own keys. Strings may use ${VAR} or ${VAR:-default} (environment).
Every error is a ConfigError whose one-line message names the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from .coerce import coerce
from .errors import ConfigError
from .schema import REMOVED_KEYS, REQUIRED, Config

CLI = "command line"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key a recipe may set (sections and leaves)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += valid_keys(hints[f.name], key + ".")
    return keys


def _unknown(where: str, key: str) -> ConfigError:
    if key in REMOVED_KEYS:
        fix = "drop the override" if where == CLI else "delete it from the recipe"
        return ConfigError(f"{where}: {key} was removed: {REMOVED_KEYS[key]}; {fix}")
    if key == "derived" or key.startswith("derived."):
        return ConfigError(
            f"{where}: {key} is computed at launch from the recipe and the world size "
            "(rmt_dist/config/derive.py); set optim.lr, ema.decay or data.batch_size instead"
        )
    hint = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.6)
    extra = f" (did you mean {hint[0]}?)" if hint else ""
    return ConfigError(f"{where}: unknown key {key!r}{extra}")


def _expand_env(value: Any, where: str, key: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{where}: {key}: environment variable ${{{name}}} is not set (export it or use ${{{name}:-default}})"
            )

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [_expand_env(v, where, key) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v, where, f"{key}.{k}") for k, v in value.items()}
    return value


def _merge(dst: dict, src: dict, where: str, prov: dict[str, str], prefix: str = "") -> None:
    """Deep-merge `src` (from file `where`) into `dst`, recording each leaf's origin."""
    for k, v in src.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: key {k!r} under {prefix or 'the top level'} is not a string")
        key = prefix + k
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v, where, prov, key + ".")
        else:
            dst[k] = v
            for p in [p for p in prov if p.startswith(key + ".")]:
                del prov[p]
            prov[key] = where
            if isinstance(v, dict):
                for sub in _leaves(v, key + "."):
                    prov[sub] = where


def _leaves(tree: dict, prefix: str) -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _leaves(v, prefix + str(k) + ".")
    return out


def read_recipe(path: str | os.PathLike, _stack: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Read a recipe and its bases into one merged tree plus {dotted key: file it came from}."""
    path = Path(path)
    where = str(_stack[-1]) if _stack else CLI
    if not path.is_file():
        raise ConfigError(f"{where}: recipe file {str(path)!r} does not exist")
    real = path.resolve()
    if real in [p.resolve() for p in _stack]:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"{path}: cycle of bases: {chain}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: expected a file name or a list of file names, got {bases!r}")
    tree: dict = {}
    prov: dict[str, str] = {}
    for base in bases:
        base_path = path.parent / _expand_env(base, str(path), "base")
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: file {str(base_path)!r} does not exist")
        sub_tree, sub_prov = read_recipe(base_path, (*_stack, path))
        _merge(tree, sub_tree, "", {})
        prov.update(sub_prov)
    _merge(tree, _expand_env(raw, str(path), ""), str(path), prov)
    return tree, prov


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=1e-3` -> ("optim.lr", 0.001). Values are YAML (lists, null, bools)."""
    if "=" not in text:
        raise ConfigError(f"{CLI}: override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{CLI}: override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        for conv in (int, float):
            try:
                value = conv(value)
                break
            except ValueError:
                pass
        if raw.strip().lower() == "none":
            value = None
    return key, value


def apply_overrides(tree: dict, prov: dict[str, str], overrides: list[str]) -> None:
    for text in overrides:
        key, value = parse_override(text)
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise _unknown(CLI, key)
            node = nxt
        node[parts[-1]] = value
        prov[key] = CLI


def build(cls: type, tree: dict, prov: dict[str, str], prefix: str = "", default_where: str = CLI) -> Any:
    """Instantiate dataclass `cls` from `tree`, coercing and rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in tree:
        if k not in names:
            key = prefix + k
            below = [
                w for p, w in prov.items() if p.startswith(key + ".")
            ]  # a section: where its keys came from
            raise _unknown(prov.get(key) or (below[0] if below else default_where), key)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name not in tree:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                where = prov.get(prefix.rstrip("."), default_where)
                raise ConfigError(f"{where}: missing required value {key}")
            continue
        value = tree[f.name]
        where = prov.get(key, default_where)
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key}: expected a mapping of {tp.__name__} keys, got {value!r}")
            kwargs[f.name] = build(tp, value, prov, key + ".", default_where)
        else:
            kwargs[f.name] = coerce(value, tp, key, where)
    return cls(**kwargs)


def missing_required(obj: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += missing_required(v, prefix + f.name + ".")
        elif isinstance(v, str) and v == REQUIRED:
            out.append(prefix + f.name)
    return out


def load_config(recipe: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The one way to get a Config: recipe file (+ bases) then command-line overrides."""
    tree, prov = read_recipe(recipe)
    apply_overrides(tree, prov, list(overrides))
    cfg = build(Config, tree, prov, default_where=str(recipe))
    missing = missing_required(cfg)
    if missing:
        key = missing[0]
        raise ConfigError(f"{recipe}: missing required value {key} (set it in the recipe or pass {key}=...)")
    from .validate import validate

    try:
        validate(cfg, str(recipe))
    except ConfigError as e:
        raise _blame(e, str(recipe), prov) from None
    return cfg


_KEY = re.compile(r"\b([a-z_]+\.[a-z_]+)\b")


def _blame(e: ConfigError, recipe: str, prov: dict[str, str]) -> ConfigError:
    """validate() names the recipe; name where the offending key was set instead (a base
    file, or the command line for a `key=value` override)."""
    text = str(e)
    body = text[len(recipe) + 2 :] if text.startswith(recipe + ": ") else text
    for key in _KEY.findall(body):
        where = prov.get(key)
        if where and where != recipe:
            return ConfigError(f"{where}: {body}")
        if where:
            break
    return e
