"""A user's own data: class folders as source, unlabelled images as target, own classes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clup.cli import main
from clup.config import DatasetConfig
from clup.data.datasets import read_dataset
from clup.errors import ManifestError
from clup.models.checkpoint import load_classifier
from clup.validators import VALIDATORS
from tests.conftest import tiny_experiment, write_experiment
from tests.fake_raw import face_pixels

CLASSES = ["round", "square", "stripes"]


def _write_images(folder: Path, label: int, count: int, seed: int, shift: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(face_pixels([label] * count, 16, 16, rng)):
        image = np.clip(pixels * (1 - shift) + 128 * shift, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{label}_{i:03d}.png")


def _class_folders(root: Path, names: list[str], per_class: int = 12) -> Path:
    for split, seed in (("train", 0), ("test", 1)):
        for label, name in enumerate(names):
            _write_images(root / split / name, label, per_class, seed * 10 + label)
    return root


def _unlabelled(root: Path, per_class: int = 20) -> Path:
    for label in range(len(CLASSES)):
        _write_images(root / f"batch{label}", label, per_class, 100 + label, shift=0.3)
    return root


def test_unlabelled_target_with_own_classes_adapts_end_to_end(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["classes"] = CLASSES
    experiment["source"]["data"] = {"kind": "folders",
                                    "path": str(_class_folders(tmp_path / "src", CLASSES))}
    experiment["target"] = {"kind": "images", "path": str(_unlabelled(tmp_path / "tgt"))}
    experiment["cluster_labeler"] = {"num_clusters": 6, "selection_ratio": 0.5}
    path = write_experiment(tmp_path / "own.yaml", experiment)

    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    assert "source model on target test       n/a" in out
    assert "CluP on target test               n/a" in out
    metrics = json.loads((run_dir / "stage3" / "metrics.json").read_text())
    train_split = metrics.pop("train_split")
    assert metrics == {"accuracy": None, "note": "no labels to evaluate: the test split is empty"}
    # Without labels the train split still has its label-free measures.
    assert train_split["accuracy"] is None and train_split["count"] == 60
    assert set(VALIDATORS) <= set(train_split) and all(
        math.isfinite(train_split[name]) for name in VALIDATORS)
    assert "(no target accuracy: no labels to evaluate" in out
    rows = list(csv.DictReader((run_dir / "stage1" / "pseudo_labels.csv").open()))
    assert len(rows) == 60 and "true_label" not in rows[0]
    assert {int(r["pseudo_label"]) for r in rows} <= {0, 1, 2}
    summary = json.loads((run_dir / "stage1" / "summary.json").read_text())
    assert "selected_accuracy" not in summary
    assert load_classifier(run_dir / "stage3" / "model.ckpt").classes == CLASSES
    assert load_classifier(run_dir / "source" / "model.ckpt").classes == CLASSES


def test_a_labelled_test_split_beside_an_unlabelled_train_split_is_evaluated(
        tmp_path: Path) -> None:
    root = tmp_path / "tgt"
    _write_images(root, 0, 2, 0)
    (root / "manifest.csv").write_text("path,label,split\n0_000.png,,train\n0_001.png,round,test\n")
    splits = read_dataset(DatasetConfig(kind="manifest", path=str(root / "manifest.csv")), CLASSES)
    assert not splits["train"].has_labels
    assert splits["test"].has_labels and splits["test"].labels.tolist() == [0]


def test_class_folders_match_names_case_and_synonyms(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    for name in ("HAPPY", "angry", "Surprised"):
        _write_images(root / name, 0, 2, 0)
    (root / "notes.txt").write_text("ignored: not an image")
    classes = ["Surprise", "Happiness", "Anger"]
    splits = read_dataset(DatasetConfig(kind="folders", path=str(root)), classes)
    assert sorted(splits["train"].labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert len(splits["test"]) == 0


def test_a_folder_matching_no_class_stops_naming_it(tmp_path: Path) -> None:
    _class_folders(tmp_path / "src", [*CLASSES, "fish"], per_class=1)
    with pytest.raises(ManifestError, match=r"folder .*fish matches none of the experiment's"):
        read_dataset(DatasetConfig(kind="folders", path=str(tmp_path / "src")), CLASSES)


def test_an_image_outside_any_class_folder_stops(tmp_path: Path) -> None:
    _class_folders(tmp_path / "src", CLASSES, per_class=1)
    _write_images(tmp_path / "src" / "train", 0, 1, 0)
    with pytest.raises(ManifestError, match="is not inside a class folder"):
        read_dataset(DatasetConfig(kind="folders", path=str(tmp_path / "src")), CLASSES)


def test_an_empty_image_folder_stops(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(ManifestError, match="holds no image"):
        read_dataset(DatasetConfig(kind="images", path=str(tmp_path / "none")), CLASSES)


def test_source_and_target_must_agree_on_the_classes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["classes"] = CLASSES
    path = write_experiment(tmp_path / "bad.yaml", experiment)  # synthetic data: 7 expressions
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "are not among the experiment's classes ['round', 'square', 'stripes']" in \
        capsys.readouterr().err


def test_experiments_naming_one_source_run_share_its_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["source"]["run_name"] = "shared-source"
    first = write_experiment(tmp_path / "first.yaml", {**experiment, "name": "first"})
    second = write_experiment(tmp_path / "second.yaml", {**experiment, "name": "second"})
    assert main(["train-source", str(first)]) == 0
    model = tmp_path / "runs" / "shared-source" / "source" / "model.ckpt"
    assert str(model) in capsys.readouterr().out
    assert main(["run", str(second), "--dry-run"]) == 0
    assert f"done, reused  CPU threads: 2, shared  {model.parent}" in capsys.readouterr().out


def test_a_shared_source_made_under_other_settings_is_kept_not_overwritten(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["source"]["run_name"] = "shared-source"
    first = write_experiment(tmp_path / "first.yaml", experiment)
    assert main(["train-source", str(first)]) == 0
    model = tmp_path / "runs" / "shared-source" / "source" / "model.ckpt"
    before = model.read_bytes()
    capsys.readouterr()
    assert main(["run", str(first), "source.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "made under other settings" in err and "source.run_name=shared-source-2" in err
    assert main(["train-source", str(first), "source.label_smoothing=0.2"]) == 2
    assert model.read_bytes() == before
