"""Tent's two variants (`sfda.tent_variant`): as published, and over several epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from clup.config import BackboneConfig, ExperimentConfig, PreprocessingConfig, experiment_from_dict
from clup.data.datamodule import DomainDataModule
from clup.data.datasets import prepare_dataset
from clup.errors import CheckpointError, ConfigError
from clup.io import read_json
from clup.losses.sfda import tent_loss
from clup.models.backbones import Backbone, build_backbone
from clup.models.checkpoint import Classifier, load_classifier, save_classifier
from clup.pipeline import run_stage
from clup.presets import resolve_sfda
from clup.registry import stage_dir
from clup.stages.sfda_adapter import PublishedTentAdapter, TentAdapter
from tests.conftest import tiny_experiment

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets rendered once; the SHOT-shaped source model trained once."""
    root = tmp_path_factory.mktemp("tent")
    config = experiment(root, "published")
    prepare_dataset(config.target, "target", progress=False)
    prepare_dataset(config.source.data, "source.data", progress=False)
    run_stage(config, config.run_dir, "source")
    return root


def experiment(root: Path, variant: str) -> ExperimentConfig:
    """SHOT's head, so there is a BatchNorm1d beside the backbone's BatchNorm2d layers."""
    raw = tiny_experiment(root, name=f"tent-{variant}", method="tent",
                          sfda={"epochs": 3, "batch_size": 16, "tent_variant": variant})
    raw["source"].update(head="shot", run_name="source-shot")
    config = experiment_from_dict(raw)
    resolve_sfda(config, config.target.train_size)  # what the driver does
    return config


def adapt(root: Path, variant: str, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[ExperimentConfig, Classifier, Classifier, list[torch.Tensor]]:
    """The source model, the adapted one as loaded from `adapt/model.ckpt`, and the
    indices of each batch that led to an optimiser step."""
    config = experiment(root, variant)
    source = load_classifier(stage_dir(config, config.run_dir, "source") / "model.ckpt")
    batches: list[torch.Tensor] = []
    adapter = PublishedTentAdapter if variant == "published" else TentAdapter
    monkeypatch.setattr(adapter, "on_train_batch_start",
                        lambda self, batch, batch_idx: batches.append(batch[2]))
    steps: list[int] = []
    monkeypatch.setattr(adapter, "on_before_optimizer_step",
                        lambda self, optimizer: steps.append(self.global_step))
    run_stage(config, config.run_dir, "adapt")
    assert len(steps) == len(batches)
    adapted = load_classifier(config.run_dir / "adapt" / "model.ckpt")
    return config, source.model, adapted.model, batches


def train_batches(config: ExperimentConfig) -> int:
    datamodule = DomainDataModule(config.require_target(), config.classes,
                                  PreprocessingConfig(image_size=16), batch_size=16)
    datamodule.setup()
    return len(datamodule.train_dataloader())


def moved(before: nn.Module, after: nn.Module) -> set[str]:
    after_params = dict(after.named_parameters())
    return {name for name, value in before.named_parameters()
            if not torch.equal(value, after_params[name])}


def norm_names(model: nn.Module, kind: type[nn.Module]) -> set[str]:
    return {f"{module_name}.{name}" for module_name, module in model.named_modules()
            if isinstance(module, kind) for name, _ in module.named_parameters()}


def shot_classifier(backbone: Backbone | None = None) -> Classifier:
    torch.manual_seed(0)
    return Classifier(backbone or build_backbone(BackboneConfig("small_cnn", width=4)),
                      len(CLASSES), head="shot")


def sfda(tmp_path: Path, variant: str) -> ExperimentConfig:
    raw = tiny_experiment(tmp_path, method="tent", sfda={"tent_variant": variant})
    config = experiment_from_dict(raw)
    resolve_sfda(config, config.target.train_size)
    return config


def test_published_tent_trains_only_batchnorm2d_affine_parameters(tmp_path: Path) -> None:
    module = PublishedTentAdapter(shot_classifier(), CLASSES, sfda(tmp_path, "published").sfda)
    trainable = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == norm_names(module.model, nn.BatchNorm2d)
    assert trainable and all(name.endswith((".weight", ".bias")) for name in trainable)
    tent_loss(module(torch.randn(4, 3, 16, 16))).backward()
    with_grad = {name for name, p in module.model.named_parameters() if p.grad is not None}
    assert with_grad == trainable


def test_published_tent_evaluates_with_batch_statistics(tmp_path: Path) -> None:
    """The same image scores differently beside other images; the source model does not."""
    source = shot_classifier().eval()
    module = PublishedTentAdapter(shot_classifier(), CLASSES, sfda(tmp_path, "published").sfda)
    model = module.model.eval()
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            assert norm.running_mean is None and norm.running_var is None
    assert model.bottleneck[1].running_mean is not None  # BatchNorm1d is left as it was
    images = torch.randn(6, 3, 16, 16)
    batches = (images[:3], images[[0, 3, 4, 5]])  # image 0 in both
    with torch.no_grad():
        adapted = [model(batch)[1][0] for batch in batches]
        unadapted = [source(batch)[1][0] for batch in batches]
    assert not torch.allclose(*adapted)
    torch.testing.assert_close(*unadapted)


def test_a_model_without_batchnorm2d_is_refused(tmp_path: Path) -> None:
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    config = sfda(tmp_path, "published").sfda
    with pytest.raises(ConfigError, match="tent_variant: published.*BatchNorm2d layers"):
        PublishedTentAdapter(shot_classifier(Backbone(body, 4)), CLASSES, config)
    # The multi-epoch variant adapts any BatchNorm: SHOT's bottleneck has one.
    TentAdapter(shot_classifier(Backbone(body, 4)), CLASSES, sfda(tmp_path, "epochs").sfda)
    linear = Classifier(Backbone(body, 4), len(CLASSES))
    with pytest.raises(ConfigError, match="tent_variant: epochs.*BatchNorm layers"):
        TentAdapter(linear, CLASSES, sfda(tmp_path, "epochs").sfda)


def test_published_tent_is_one_online_pass(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, source, adapted, batches = adapt(root, "published", monkeypatch)
    assert len(batches) == train_batches(config)  # sfda.epochs is 3
    seen = torch.cat(batches)
    assert len(seen.unique()) == len(seen)  # no image twice
    changed = moved(source, adapted)
    assert changed and changed <= norm_names(source, nn.BatchNorm2d)
    # SHOT's BatchNorm1d stayed in evaluation mode: its running statistics are the source's.
    before = source.get_submodule("bottleneck.1").state_dict()
    after = adapted.get_submodule("bottleneck.1").state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    metrics = read_json(config.run_dir / "adapt" / "metrics.json")
    assert 0 <= metrics["online_train_accuracy"] <= 1


def test_the_saved_published_model_evaluates_as_it_did(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint keeps the batch statistics: the loaded model scores the test split
    as the stage did, in the same single evaluation batch."""
    config = adapt(root, "published", monkeypatch)[0]
    loaded = load_classifier(config.run_dir / "adapt" / "model.ckpt")
    model = loaded.model.eval()
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            assert not norm.track_running_stats and norm.running_mean is None
    datamodule = DomainDataModule(config.require_target(), config.classes, loaded.preprocessing)
    datamodule.setup()
    (images, labels, _), = datamodule.test_dataloader()
    with torch.no_grad():
        accuracy = float((model(images)[1].argmax(dim=1) == labels).float().mean())
    metrics = read_json(config.run_dir / "adapt" / "metrics.json")
    assert accuracy == pytest.approx(metrics["accuracy"])


def test_epochs_tent_adapts_every_batchnorm_for_every_epoch(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, source, adapted, batches = adapt(root, "epochs", monkeypatch)
    assert len(batches) == 3 * train_batches(config)
    changed = moved(source, adapted)
    assert changed <= norm_names(source, _BatchNorm)
    assert changed & norm_names(source, nn.BatchNorm1d)
    for name, norm in adapted.named_modules():
        if isinstance(norm, _BatchNorm):
            assert norm.track_running_stats  # evaluated with the running statistics,
            assert not torch.equal(norm.running_mean,  # which followed the target
                                   source.get_submodule(name).running_mean)


def test_batch_statistics_survive_a_checkpoint(tmp_path: Path) -> None:
    module = PublishedTentAdapter(shot_classifier(), CLASSES, sfda(tmp_path, "published").sfda)
    path = tmp_path / "model.ckpt"
    save_classifier(path, module.model, CLASSES, BackboneConfig("small_cnn", width=4),
                    PreprocessingConfig(image_size=16))
    loaded = load_classifier(path).model.eval()
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)[1], module.model.eval()(images)[1])
    data = torch.load(path, weights_only=True)
    data["batch_statistics"].append("head")
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="'head' under batch_statistics"):
        load_classifier(path)
