"""SHOT, NRC, AaD and Tent adapt a tiny source model end to end, through the pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from clup.config import ExperimentConfig, experiment_from_dict
from clup.data.datamodule import DomainDataModule
from clup.data.datasets import prepare_dataset
from clup.errors import ConfigError
from clup.io import read_json
from clup.models.checkpoint import Classifier, load_classifier
from clup.pipeline import run_stage
from clup.presets import resolve_sfda
from clup.registry import stage_dir
from clup.stages.common import fit_stage
from clup.stages.sfda_adapter import NRCAdapter
from tests.conftest import tiny_experiment


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets rendered once; each head's source model is trained once, by the first test."""
    root = tmp_path_factory.mktemp("sfda")
    config = experiment(root, "tent", "linear")
    prepare_dataset(config.target, "target", progress=False)
    prepare_dataset(config.source.data, "source.data", progress=False)
    return root


def experiment(root: Path, method: str, head: str) -> ExperimentConfig:
    raw = tiny_experiment(root, name=f"{method}-{head}", method=method,
                          sfda={"epochs": 1, "batch_size": 16, "k": 3, "kk": 2})
    raw["source"].update(head=head, run_name=f"source-{head}")
    config = experiment_from_dict(raw)
    resolve_sfda(config, config.target.train_size)  # what the driver does
    return config


def adapt(root: Path, method: str, head: str) -> tuple[Classifier, Classifier]:
    """The source model and the adapted one, checked for a metrics file and their head."""
    config = experiment(root, method, head)
    run_stage(config, config.run_dir, "source")
    source = load_classifier(stage_dir(config, config.run_dir, "source") / "model.ckpt")
    run_stage(config, config.run_dir, "adapt")
    accuracy = read_json(config.run_dir / "adapt" / "metrics.json")["accuracy"]
    assert 0 <= accuracy <= 1
    adapted = load_classifier(config.run_dir / "adapt" / "model.ckpt")
    assert adapted.model.head_kind == head
    assert adapted.classes == source.classes
    check_class_shares(config)
    return source.model, adapted.model


def check_class_shares(config: ExperimentConfig) -> None:
    """Each epoch's share of the target per class, in metrics.json and the log."""
    metrics = read_json(config.run_dir / "adapt" / "metrics.json")
    per_epoch = metrics["class_share_per_epoch"]
    assert list(per_epoch) == config.classes
    assert all(len(shares) == config.sfda.epochs for shares in per_epoch.values())
    assert sum(shares[-1] for shares in per_epoch.values()) == pytest.approx(1.0)
    if config.method != "tent":  # the source model's, from the first pass over the target
        assert sum(metrics["class_share_at_start"].values()) == pytest.approx(1.0)
    with (config.run_dir / "adapt" / "csv" / "metrics.csv").open() as log:
        largest = [float(row["train/largest_class_share"]) for row in csv.DictReader(log)
                   if row["train/largest_class_share"]]
    assert largest == [pytest.approx(max(shares[-1] for shares in per_epoch.values()))]


def changed(before: nn.Module, after: nn.Module) -> set[str]:
    after_params = dict(after.named_parameters())
    return {name for name, value in before.named_parameters()
            if not torch.equal(value, after_params[name])}


def test_shot_keeps_the_classifier_and_adapts_the_rest(root: Path) -> None:
    source, adapted = adapt(root, "shot", "shot")
    moved = changed(source, adapted)
    assert not {name for name in moved if name.startswith("head.")}
    assert any(name.startswith("backbone.") for name in moved)
    assert any(name.startswith("bottleneck.") for name in moved)
    with (root / "runs" / "shot-shot" / "adapt" / "csv" / "metrics.csv").open() as log:
        accuracies = [float(row["train/pseudo_label_accuracy"]) for row in csv.DictReader(log)
                      if row["train/pseudo_label_accuracy"]]
    assert accuracies and all(0 <= a <= 1 for a in accuracies)


@pytest.mark.parametrize("method", ["nrc", "aad"])
def test_neighbourhood_methods_adapt_every_layer(root: Path, method: str) -> None:
    source, adapted = adapt(root, method, "shot")
    moved = changed(source, adapted)
    for part in ("backbone.", "bottleneck.", "head."):
        assert any(name.startswith(part) for name in moved), part
    metrics = read_json(root / "runs" / f"{method}-shot" / "adapt" / "metrics.json")
    assert metrics["knn_label_agreement_k"] == 3
    assert 0 <= metrics["knn_label_agreement"] <= 1


def test_tent_changes_only_batchnorm_affine_parameters(root: Path) -> None:
    source, adapted = adapt(root, "tent", "linear")
    norms = {f"{module_name}.{name}" for module_name, module in source.named_modules()
             if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d)
             for name, _ in module.named_parameters()}
    moved = changed(source, adapted)
    assert moved and moved <= norms


@pytest.mark.parametrize("method", ["shot", "nrc", "aad"])
def test_linear_source_is_refused_where_shot_head_is_needed(root: Path, method: str) -> None:
    with pytest.raises(ConfigError, match=f"method {method} adapts SHOT's network shape"):
        experiment(root, method, "linear")  # a source it would train: refused at once
    linear = experiment(root, "tent", "linear")
    run_stage(linear, linear.run_dir, "source")
    raw = tiny_experiment(root, name=f"{method}-given", method=method)
    raw["source"]["checkpoint"] = str(stage_dir(linear, linear.run_dir, "source") / "model.ckpt")
    given = experiment_from_dict(raw)  # a given checkpoint's head is only known on loading
    with pytest.raises(ConfigError, match="need `source.head: shot`"):
        run_stage(given, given.run_dir, "adapt")


def test_nrc_resumes_from_the_last_epoch_checkpoint(root: Path) -> None:
    """The banks are not in the checkpoint: a resumed fit refills them and carries on."""
    config = experiment(root, "nrc", "shot")
    run_stage(config, config.run_dir, "source")
    folder = config.run_dir / "resume"
    batches: list[list[int]] = []
    for epochs in (1, 2):
        source = load_classifier(stage_dir(config, config.run_dir, "source") / "model.ckpt")
        module = NRCAdapter(source.model, config.classes, config.sfda)
        batches.append([])
        module.on_train_batch_start = lambda batch, batch_idx: batches[-1].append(batch_idx)
        datamodule = DomainDataModule(config.require_target(), config.classes,
                                      source.preprocessing, batch_size=16,
                                      train_views="unlabelled")
        trainer = fit_stage(config, folder, "adapt", module, datamodule, epochs)
        assert module.feature_bank.shape == (config.target.train_size, 256)
    assert len(batches[1]) == len(batches[0]) > 0  # the second fit ran its second epoch only
    assert trainer.global_step == 2 * len(batches[0])
