"""Where a user's raw datasets and their prepared copies live, set once per machine.

`CLUP_DATA_ROOT` (or `data_root:` in the user config file) is the folder holding
the raw datasets (`AFE/`, `RAF-DB/`, `ExpW/`, `FER2013/`). Prepared copies go to
`CLUP_PREPARED_ROOT` (or `prepared_root:`), by default `<data_root>/clup-prepared`,
which a cluster user may point at scratch space when the raw data is read-only.
The environment wins over the file, so a job script can redirect one run.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from clup.config.loader import parse_yaml
from clup.errors import ConfigError

DATA_ROOT_ENV = "CLUP_DATA_ROOT"
PREPARED_ROOT_ENV = "CLUP_PREPARED_ROOT"
USER_CONFIG_ENV = "CLUP_USER_CONFIG"
USER_KEYS = ("data_root", "prepared_root")


def user_config_path() -> Path:
    if os.environ.get(USER_CONFIG_ENV):
        return Path(os.environ[USER_CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "clup" / "config.yaml"


def _user_setting(key: str) -> tuple[Path | None, str]:
    path = user_config_path()
    if not path.is_file():
        return None, ""
    try:
        settings = parse_yaml(path.read_text(), str(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(settings, dict):
        raise ConfigError(f"{path} must be a mapping with keys {', '.join(USER_KEYS)}")
    unknown = sorted(set(settings) - set(USER_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; accepted: {', '.join(USER_KEYS)}")
    value = settings.get(key)
    if not value:
        return None, ""
    # Relative to the file, so the setting means the same folder wherever clup runs.
    return path.parent / Path(str(value)).expanduser(), f"{key} in {path}"


def data_root() -> tuple[Path | None, str]:
    """The raw-data folder and where that setting came from (for messages)."""
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser(), DATA_ROOT_ENV
    return _user_setting("data_root")


def prepared_root() -> Path | None:
    if os.environ.get(PREPARED_ROOT_ENV):
        return Path(os.environ[PREPARED_ROOT_ENV]).expanduser()
    configured, _ = _user_setting("prepared_root")
    if configured is not None:
        return configured
    root, _ = data_root()
    return root / "clup-prepared" if root is not None else None


def raw_dataset_root(path: str, key: str) -> tuple[Path, str | None]:
    """An absolute dataset path as it is; a relative one under the data root.

    Also returns where the data root came from (None for an absolute path), for messages.
    """
    given = Path(path).expanduser()
    if given.is_absolute():
        return given, None
    root, origin = data_root()
    if root is None:
        raise ConfigError(
            f"{key} is {path!r}, relative to the data root, but no data root is set: "
            f"export {DATA_ROOT_ENV}=/path/to/datasets or write `data_root: /path/to/datasets` "
            f"in {user_config_path()}"
        )
    return root / given, origin


def describe() -> str:
    """The current settings, as `clup paths` prints them."""
    root, origin = data_root()
    prepared = prepared_root()
    return "\n".join([
        f"data root:     {root if root else '(not set)'}"
        + (f"  (from {origin})" if origin else ""),
        f"prepared root: {prepared if prepared else '(not set)'}",
        f"user config:   {user_config_path()}"
        + ("" if user_config_path().is_file() else "  (absent)"),
    ])
