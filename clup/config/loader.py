"""Typed YAML: a file (and the files it `extends`) read into a tree of dataclasses.

`load` reads a YAML file (refusing a key given twice, reading `5e-4` as a number, as
YAML 1.2 does), applies `key.sub=value` overrides and converts the result against the
dataclass annotations, refusing unknown keys, wrong types and values
outside a `Literal` (or a `OneOf`), then calls each node's `validate(key)`, with a message
that names the dotted key at fault. The `check_*` helpers are for those `validate` methods.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml

from clup.errors import ConfigError

T = TypeVar("T")

MAX_NAME_BYTES = 255
"""The longest file name, in bytes, that ext4, XFS, Btrfs and most other file systems accept."""
LISTED_FILES = 5
"""How many YAML files of a folder given as a YAML file the message names."""


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last silently) and reading `5e-4` as a number, as YAML 1.2 does (YAML 1.1 floats need
    a dot). The stream's `name` is the file (or override) named in its errors."""

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        # Checked as written, before merge keys (`<<: *base`) bring in keys to override.
        node = super().compose_mapping_node(anchor)
        lines: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                raise ConfigError(
                    f"{self.name}: key {key.value!r} is given on line {lines[key.tag, key.value]} "
                    f"and again on line {line}, and YAML would keep only the last; keep one of them"
                )
            lines[key.tag, key.value] = line
        return node


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


@dataclasses.dataclass(frozen=True)
class OneOf:
    """`Annotated[str, OneOf(values)]`: a `Literal` whose values another module holds. They
    are asked for (`values()`) only when a value is converted, so that importing the schema
    does not import that module."""

    values: Callable[[], Collection[Any]]


def load(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file (with the files it `extends`), apply overrides, convert, validate."""
    path = Path(path)
    files: list[Path] = []
    raw = read_yaml_tree(path, files=files)
    for item in overrides:
        apply_override(raw, item)
    try:
        return from_dict(cls, raw)
    except ConfigError as err:
        bases = f" (merged with {', '.join(map(str, files[:-1]))})" if len(files) > 1 else ""
        raise ConfigError(f"{path}{bases}: {err}") from None


def read_yaml_tree(path: Path, chain: tuple[Path, ...] = (),
                   files: list[Path] | None = None) -> dict[str, Any]:
    """A YAML mapping merged over the files its `extends` key names, in order.

    Paths in `extends` are relative to the file naming them. Mappings merge key by
    key; any other value in the extending file replaces the base's. `files` collects
    every file read, bases first.
    """
    extended = f" (extended by {chain[-1]})" if chain else ""
    if path.is_dir():
        raise ConfigError(_folder_given(path, extended))
    if not path.exists():
        raise ConfigError(f"file {path} does not exist{extended}")
    if path.resolve() in chain:
        raise ConfigError(f"{path} extends itself through {' -> '.join(map(str, chain))}")
    try:
        raw = parse_yaml(path.read_text(), str(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, got {type(raw).__name__}")
    bases = raw.pop("extends", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: extends must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge(merged, read_yaml_tree(path.parent / base, (*chain, path.resolve()),
                                               files))
    if files is not None:
        files.append(path)
    return _merge(merged, raw)


def parse_yaml(text: str, name: str) -> Any:
    """YAML text read with `YamlLoader`; `name` (a file, an override) is named in errors."""
    loader = YamlLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _folder_given(path: Path, extended: str) -> str:
    names = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    if not names:
        return f"{path} is a folder, not a YAML file, and holds no .yaml file{extended}"
    listed = ", ".join(names[:LISTED_FILES])
    more = f" and {len(names) - LISTED_FILES} more" if len(names) > LISTED_FILES else ""
    return (f"{path} is a folder, not a YAML file{extended}; name one of the YAML files in "
            f"it: {listed}{more}")


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], raw: Mapping[str, Any], key: str = "") -> T:
    """Convert a plain mapping (YAML, a checkpoint's settings) into dataclass `cls`."""
    node = _convert(raw, cls, key)
    _validate_tree(node, key)
    return node


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 3, 0.1, null)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    try:
        value = parse_yaml(text, f"override {item!r}")
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def check_positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")


def check_non_negative(value: float, key: str) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value}")


def check_fraction(value: float, key: str) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{key} must be in [0, 1], got {value}")


def check_choice(value: Any, allowed: Collection[Any], key: str) -> None:
    """The check a `Literal` annotation makes, for a choice whose list lives elsewhere."""
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def check_folder_name(value: str, key: str) -> None:
    if not value or "/" in value or value.startswith("."):
        raise ConfigError(f"{key} must be a non-empty folder name, got {value!r}")
    size = len(value.encode())
    if size > MAX_NAME_BYTES:
        raise ConfigError(f"{key} is {size} bytes long, but a file name may be at most "
                          f"{MAX_NAME_BYTES} bytes on common file systems; shorten it")


def check_keys(mapping: Mapping[str, Any], accepted: Collection[str], key: str) -> None:
    """Refuse a key of `mapping` (the section at `key`) that is not `accepted`."""
    for name in mapping:
        if name not in accepted:
            close = difflib.get_close_matches(str(name), list(accepted), n=1)
            hint = f" (did you mean {_join(key, close[0])}?)" if close else ""
            raise ConfigError(f"unknown key {_join(key, str(name))}{hint}; "
                              f"accepted keys here: {', '.join(accepted)}")


def _validate_tree(node: Any, key: str) -> None:
    if isinstance(node, dict):
        for name, item in node.items():
            _validate_tree(item, _join(key, name))
    if not dataclasses.is_dataclass(node):
        return
    for f in dataclasses.fields(node):
        _validate_tree(getattr(node, f.name), _join(key, f.name))
    if hasattr(node, "validate"):
        node.validate(key)


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        errors = []
        for option in inner:
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        # "x must be an integer or x must be null" reads as "x must be an integer or
        # null"; a message about a key inside a section keeps its own key.
        if all(e.startswith(f"{key} ") for e in errors):
            raise ConfigError(f"{key} " + " or ".join(e.removeprefix(f"{key} ") for e in errors))
        raise ConfigError(" or ".join(errors))
    if origin is Literal:
        check_choice(value, typing.get_args(annotation), key)
        return value
    if origin is Annotated:
        _, choices = typing.get_args(annotation)
        check_choice(value, choices.values(), key)
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        _, item_type = typing.get_args(annotation)
        return {str(name): _convert(item, item_type, _join(key, str(name)))
                for name, item in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return _convert_dataclass(value, annotation, key)
    return _convert_scalar(value, annotation, key)


def _convert_dataclass(value: Any, cls: type, key: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key or 'the configuration'} must be a mapping, got {value!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(value, fields, key)
    # A schema may default some values by others (`ExperimentConfig.defaults_for`: a
    # method's recipe); what the mapping sets itself wins.
    defaults_for = getattr(cls, "defaults_for", None)
    if defaults_for is not None:
        value = _merge(defaults_for(value), value)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(key, name)} is required")
    return cls(**kwargs)


def _convert_scalar(value: Any, annotation: Any, key: str) -> Any:
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {key}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
