"""`clup run` on a tiny experiment, as a user runs it: a separate process, real stages."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from clup.config import CANONICAL_CLASSES, BackboneConfig, PreprocessingConfig, load_experiment
from clup.data.datamodule import DomainDataModule
from clup.models.backbones import build_backbone
from clup.models.checkpoint import Classifier, load_classifier, save_classifier
from clup.validators import VALIDATORS
from tests.conftest import tiny_experiment, write_experiment

ARTIFACTS = [
    "config.yaml", "results.json", "source/model.ckpt", "source/metrics.json",
    "stage1/pseudo_labels.csv", "stage1/summary.json", "stage1/source_on_target.json",
    "stage1/pseudo_labels.png",
    "stage2/backbone.ckpt", "stage3/model.ckpt", "stage3/metrics.json",
]


def clup(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clup.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_run_writes_every_artifact_and_reuses_finished_stages(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, wandb={"mode": "offline", "project": "clup-test"})
    path = write_experiment(tmp_path / "tiny.yaml", experiment)
    run_dir = tmp_path / "runs" / "tiny"
    first = clup("run", str(path))
    assert first.returncode == 0, first.stderr[-3000:]
    for artifact in ARTIFACTS:
        assert (run_dir / artifact).is_file(), artifact
    assert "CluP on target test" in first.stdout

    rows = list(csv.DictReader((run_dir / "stage1/pseudo_labels.csv").open()))
    assert len(rows) == 84
    _check_purity_and_selection(rows, ratio=0.5)
    summary = json.loads((run_dir / "stage1/summary.json").read_text())
    assert summary["num_selected"] == sum(r["selected"] == "1" for r in rows)
    assert 0 <= summary["selected_accuracy"] <= 1
    for key in ("auc_purity", "auc_confidence"):
        assert summary[key] is None or 0 <= summary[key] <= 1
    curve = summary["diagnostics"]["cluster label, purity"]["curve"]
    assert [p["ratio"] for p in curve][-1] == 1.0 and curve[-1]["selected"] == 84

    metrics = json.loads((run_dir / "stage3/metrics.json").read_text())
    assert sum(map(sum, metrics["confusion_matrix"])) == 35
    assert set(metrics["per_class_accuracy"]) == {
        "Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["target_accuracy"] == metrics["accuracy"]
    _check_train_split(run_dir, metrics["train_split"], results)
    source_split = summary["source_train_split"]
    source_preds = [int(r["source_pred"]) for r in rows]
    truth = [int(r["true_label"]) for r in rows]
    assert source_split["accuracy"] == pytest.approx(
        sum(p == t for p, t in zip(source_preds, truth, strict=True)) / 84)
    assert set(results["seconds"]) == {"source", "stage1", "stage2", "stage3"}
    assert load_classifier(run_dir / "stage3/model.ckpt").classes[0] == "Surprise"
    # The one checkpoint a finished stage keeps is its artifact: no resume or epoch files.
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.ckpt")) == [
        "source/model.ckpt", "stage2/backbone.ckpt", "stage3/model.ckpt"]
    for stage in ("source", "stage1", "stage2", "stage3"):
        assert list((run_dir / stage / "wandb").glob("offline-run-*")), stage
        assert (run_dir / stage / "csv" / "metrics.csv").is_file() or stage == "stage1"

    stamps = {s: (run_dir / s / "done.json").stat().st_mtime_ns
              for s in ("source", "stage1", "stage2", "stage3")}
    again = clup("run", str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already, reused") == 4
    assert stamps == {s: (run_dir / s / "done.json").stat().st_mtime_ns for s in stamps}

    changed = clup("run", str(path), "swav.epochs=3")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert changed.stdout.count("done already, reused") == 2
    assert (run_dir / "stage3/done.json").stat().st_mtime_ns != stamps["stage3"]
    assert "max_epochs=3" in (run_dir / "stage2/stage.log").read_text()


def _check_train_split(run_dir: Path, measured: dict, results: dict) -> None:
    """Stage 3's train-split measures are its saved model's on the train images, unaugmented:
    recomputed here from the checkpoint and the config the run wrote."""
    loaded = load_classifier(run_dir / "stage3/model.ckpt")
    config = load_experiment(run_dir / "config.yaml")
    datamodule = DomainDataModule(config.require_target(), config.classes,
                                  loaded.preprocessing)
    datamodule.setup()
    loaded.model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for images, label, _ in datamodule.predict_dataloader():
            probs.append(torch.softmax(loaded.model(images)[1], dim=1))
            labels.append(label)
    probs_array, truth = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    assert measured["count"] == len(truth) == 84
    assert measured["accuracy"] == pytest.approx(float((probs_array.argmax(1) == truth).mean()))
    for name, validator in VALIDATORS.items():
        assert measured[name] == pytest.approx(validator(probs_array), abs=1e-5)
        assert results[f"train_{name}"] == measured[name]
    assert results["train_accuracy"] == measured["accuracy"]


def _check_purity_and_selection(rows: list[dict[str, str]], ratio: float) -> None:
    """Recompute stage 1 from the `cluster` and `source_pred` columns alone."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for row in rows:
        votes[int(row["cluster"])][int(row["source_pred"])] += 1
    by_class: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for row in rows:
        counts = votes[int(row["cluster"])]
        top = max(counts.values())
        assert int(row["pseudo_label"]) == min(c for c, n in counts.items() if n == top)
        assert float(row["purity"]) == top / sum(counts.values())
        by_class[int(row["pseudo_label"])].append((-float(row["purity"]), int(row["index"])))
    expected = set()
    for members in by_class.values():
        keep = int(ratio * len(members) + 1e-9)
        expected |= {index for _, index in sorted(members)[:keep]}
    assert expected == {int(r["index"]) for r in rows if r["selected"] == "1"}


def test_failing_stage_stops_the_other_and_names_its_log(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    broken = tmp_path / "broken.ckpt"
    _nan_classifier(broken)  # it fits the experiment, so the run starts; stage 1 fails on it
    experiment["source"]["checkpoint"] = str(broken)
    experiment["swav"]["epochs"] = 200
    path = write_experiment(tmp_path / "tiny.yaml", experiment)
    started = time.monotonic()
    result = clup("run", str(path))
    assert result.returncode != 0
    assert "stage 1, ClusterLabeler failed" in result.stderr
    assert "stage1/stage.log" in result.stderr
    log = (tmp_path / "runs/tiny/stage1/stage.log").read_text()
    assert "z must contain only finite values" in log
    assert not (tmp_path / "runs/tiny/stage2/done.json").exists()
    assert time.monotonic() - started < 120


def _nan_classifier(path: Path) -> None:
    """A source model of the tiny experiment's shape and classes whose weights are NaN."""
    config = BackboneConfig("small_cnn", width=4)
    model = Classifier(build_backbone(config), len(CANONICAL_CLASSES))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    save_classifier(path, model, list(CANONICAL_CLASSES), config,
                    PreprocessingConfig(image_size=16))


def test_more_clusters_than_target_images_stops_before_any_training(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["cluster_labeler"]["num_clusters"] = 500
    result = clup("run", str(write_experiment(tmp_path / "tiny.yaml", experiment)))
    assert result.returncode == 2
    assert "num_clusters is 500, but the target has only 84 train images" in result.stderr
    assert not (tmp_path / "runs/tiny/source").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux parent-death signals")
def test_run_killed_during_stage2_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["swav"]["epochs"] = 40
    path = write_experiment(tmp_path / "tiny.yaml", experiment)
    checkpoint = tmp_path / "runs/tiny/stage2/checkpoints/last.ckpt"
    driver = subprocess.Popen([sys.executable, "-m", "clup.cli", "run", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "stage 2 never wrote a checkpoint"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    _wait_for_no_stage_processes(session=driver.pid)
    assert not (tmp_path / "runs/tiny/stage2/done.json").exists()
    interrupted_epoch = torch.load(checkpoint, weights_only=False)["epoch"]

    result = clup("run", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "runs/tiny/stage2/stage.log").read_text()
    assert "Restoring states from the checkpoint" in log
    assert interrupted_epoch < 40
    done = json.loads((tmp_path / "runs/tiny/stage2/done.json").read_text())
    assert done["attempts"] == 2  # and its seconds count the first attempt's epochs too
    assert json.loads((tmp_path / "runs/tiny/results.json").read_text())["target_accuracy"] >= 0


def _wait_for_no_stage_processes(session: int, timeout: float = 60) -> None:
    """Stage processes die with the driver (a parent-death signal, or for stages forked
    from the preloaded server its watch of the driver); wait until no process is left in
    the driver's session, the server included."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = subprocess.run(["pgrep", "-s", str(session)], capture_output=True)
        if alive.returncode != 0:
            return
        time.sleep(0.2)
    raise AssertionError("stage processes outlived the killed driver")


def test_instance_labels_and_a_source_initialised_stage3_skip_swav(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["cluster_labeler"].update(labels="instance", score="confidence")
    experiment["finetune"]["init"] = "source"
    result = clup("run", str(write_experiment(tmp_path / "tiny.yaml", experiment)))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs/tiny"
    assert not (run_dir / "stage2").exists()
    rows = list(csv.DictReader((run_dir / "stage1/pseudo_labels.csv").open()))
    assert all(r["pseudo_label"] == r["source_pred"] for r in rows)
    for label in {r["pseudo_label"] for r in rows}:
        members = [r for r in rows if r["pseudo_label"] == label]
        kept = [float(r["source_conf"]) for r in members if r["selected"] == "1"]
        dropped = [float(r["source_conf"]) for r in members if r["selected"] == "0"]
        assert len(kept) == len(members) // 2
        assert not kept or not dropped or min(kept) >= max(dropped)
    adapted = load_classifier(run_dir / "stage3/model.ckpt")
    assert adapted.backbone == load_classifier(run_dir / "source/model.ckpt").backbone
