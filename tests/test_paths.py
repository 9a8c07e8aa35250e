from pathlib import Path

import pytest

from clup.errors import ConfigError
from clup.paths import data_root, describe, prepared_root, raw_dataset_root


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("CLUP_DATA_ROOT", "CLUP_PREPARED_ROOT"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "clup.yaml"
    monkeypatch.setenv("CLUP_USER_CONFIG", str(config))
    return config


def test_user_config_file_sets_both_roots(clean: Path, tmp_path: Path) -> None:
    clean.write_text(f"data_root: {tmp_path / 'raw'}\nprepared_root: {tmp_path / 'fast'}\n")
    assert data_root() == (tmp_path / "raw", f"data_root in {clean}")
    assert prepared_root() == tmp_path / "fast"
    assert raw_dataset_root("ExpW", "target.path")[0] == tmp_path / "raw" / "ExpW"
    assert raw_dataset_root("/abs/ExpW", "target.path")[0] == Path("/abs/ExpW")
    assert f"data root:     {tmp_path / 'raw'}" in describe()


def test_environment_wins_and_prepared_root_defaults_under_the_data_root(
        clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean.write_text(f"data_root: {tmp_path / 'raw'}\n")
    monkeypatch.setenv("CLUP_DATA_ROOT", str(tmp_path / "env"))
    assert data_root() == (tmp_path / "env", "CLUP_DATA_ROOT")
    assert prepared_root() == tmp_path / "env" / "clup-prepared"


def test_bad_user_config_names_the_file(clean: Path) -> None:
    clean.write_text("data_rot: /x\n")
    with pytest.raises(ConfigError, match=r"clup.yaml: unknown keys \['data_rot'\]"):
        data_root()
    clean.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        data_root()


def test_nothing_set_means_no_roots(clean: Path) -> None:
    assert data_root() == (None, "")
    assert prepared_root() is None
    with pytest.raises(ConfigError, match="no data root is set"):
        raw_dataset_root("AFE", "source.data.path")
