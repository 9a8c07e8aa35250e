"""The dataset kinds' registry is the one list of `kind` and `domain` values, and each
list of allowed values the schema checks lives where it is implemented."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clup.config import DatasetConfig, experiment_from_dict
from clup.data.digits import SOURCES
from clup.data.kinds import KINDS, DatasetSettings, RawKind, every_domain
from clup.data.raw import DATASETS
from clup.data.synthetic import DOMAINS
from clup.errors import ConfigError
from clup.models.catalogue import STEMS
from clup.plan import describe_plan
from tests.conftest import tiny_experiment


def _target(tmp_path: Path, **settings: object) -> dict:
    experiment = tiny_experiment(tmp_path)
    experiment["target"].update(settings)
    return experiment


def test_the_kinds_are_the_users_layouts_the_benchmarks_then_every_raw_reader() -> None:
    assert list(KINDS) == ["manifest", "folders", "images", "synthetic", "digits", *DATASETS]
    assert all(isinstance(KINDS[name], RawKind) for name in DATASETS)


def test_the_schema_takes_kinds_and_domains_from_the_registry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "target.kind must be one of ['manifest', 'folders', 'images', 'synthetic', "
            "'digits', 'afe', 'rafdb', 'expw', 'fer2013'], got 'bogus'")):
        experiment_from_dict(_target(tmp_path, kind="bogus"))
    assert every_domain() == (*DOMAINS, *SOURCES) == ("studio", "wild", "mnist", "uci")
    with pytest.raises(ConfigError, match=re.escape(
            "target.domain must be one of ['studio', 'wild', 'mnist', 'uci'], got 'bogus'")):
        experiment_from_dict(_target(tmp_path, domain="bogus"))
    with pytest.raises(ConfigError, match=re.escape(
            "target.domain must be one of ['mnist', 'uci'] for kind digits, got 'wild'")):
        experiment_from_dict(_target(tmp_path, kind="digits"))
    assert experiment_from_dict(_target(tmp_path, kind="afe", domain="uci")).target.kind == "afe"


def test_the_schema_takes_the_stems_from_their_table(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["backbone"]["stem"] = "large"
    with pytest.raises(ConfigError, match=re.escape(
            f"backbone.stem must be one of {list(STEMS)}, got 'large'")):
        experiment_from_dict(experiment)


def test_reading_the_schema_imports_neither_torch_nor_the_readers() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, clup.config; print(*sorted(m for m in "
         "('torch', 'lightning', 'numpy', 'clup.data.kinds') if m in sys.modules))"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


def test_every_setting_a_kind_reads_is_a_dataset_setting() -> None:
    read = set(DatasetSettings.__annotations__)
    assert read <= {f.name for f in dataclasses.fields(DatasetConfig)}


def test_batched_crops_are_cut_from_the_prepared_side_of_raw_datasets_only() -> None:
    for name, kind in KINDS.items():
        dataset = DatasetConfig(kind=name, path="data", prepared_size=96)
        assert kind.crop_source_size(dataset, 64) == (96 if name in DATASETS else 64)


def test_the_dry_run_checks_the_cluster_count_before_the_benchmark_is_rendered(
        tmp_path: Path) -> None:
    config = experiment_from_dict(_target(tmp_path, train_size=5))
    with pytest.raises(ConfigError, match="num_clusters is 10, but the target has only 5 train"):
        describe_plan(config, gpus=[], cpu_threads=2)
    assert not Path(config.require_target().path).exists()
