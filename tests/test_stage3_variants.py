"""Stage 3's switches: `finetune.pseudo_labels`, `finetune.unlabelled_loss` and
`finetune.init: source_classifier`; the maths by hand, the loaders on a table written here,
the configuration, and one tiny stage-3 run per switch."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clup.config import experiment_from_dict
from clup.data.datamodule import (
    LABELLED_STREAM,
    UNLABELLED_STREAM,
    DomainDataModule,
    LabelledEpochs,
    read_pseudo_labels,
)
from clup.data.datasets import prepare_dataset
from clup.errors import ConfigError, ManifestError
from clup.io import read_json
from clup.losses import information_maximization
from clup.mixup import MixedBatch, mixup_batch, mixup_cross_entropy
from clup.models.backbones import build_backbone
from clup.models.checkpoint import Classifier, load_classifier
from clup.pipeline import active_stages, fingerprint, run_stage
from clup.registry import RunLayout
from clup.stages.pseudo_label_finetuner import PseudoLabelFinetuner, initial_model
from tests.conftest import tiny_experiment

# ---------------------------------------------------------------- weighted mixup loss


def _cross_entropy(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def test_weighted_mixup_loss_equals_the_hand_computation() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0]],
                          dtype=torch.float64)
    w = [0.2, 1.0, 0.5]
    perm, lam = [2, 0, 1], 0.3
    mixed_w = [lam * w[i] + (1 - lam) * w[perm[i]] for i in range(3)]
    batch = MixedBatch(inputs=torch.zeros(3), targets_a=torch.tensor([0, 1, 2]),
                       targets_b=torch.tensor([2, 0, 1]), lam=lam,
                       weights=torch.tensor(mixed_w, dtype=torch.float64))
    rows, a, b = logits.tolist(), [0, 1, 2], [2, 0, 1]
    per_sample = [lam * _cross_entropy(rows[i], a[i]) + (1 - lam) * _cross_entropy(rows[i], b[i])
                  for i in range(3)]
    expected = sum(m * loss for m, loss in zip(mixed_w, per_sample, strict=True)) / sum(mixed_w)
    assert mixup_cross_entropy(logits, batch).item() == pytest.approx(expected, rel=1e-12)
    # The mixed weights of a batch sum to its own weights' sum: the normaliser is sum_i w_i.
    assert sum(mixed_w) == pytest.approx(sum(w), rel=1e-12)


def test_mixup_batch_mixes_the_weights_with_the_images_and_draws_nothing_more() -> None:
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.arange(5)
    w = torch.tensor([0.1, 0.9, 0.4, 1.0, 0.0], dtype=torch.float64)
    plain = mixup_batch(x, y, 0.2, torch.Generator().manual_seed(4))
    weighted = mixup_batch(x, y, 0.2, torch.Generator().manual_seed(4), w)
    assert plain.weights is None
    assert weighted.lam == plain.lam and torch.equal(weighted.inputs, plain.inputs)
    perm = weighted.targets_b.tolist()
    for i in range(5):
        expected = weighted.lam * w[i].item() + (1 - weighted.lam) * w[perm[i]].item()
        assert weighted.weights[i].item() == pytest.approx(expected, rel=1e-12)
    assert torch.equal(mixup_batch(x, y, 0.0, None, w).weights, w)
    with pytest.raises(ValueError, match="weights"):
        mixup_batch(x, y, 0.2, None, torch.ones(4))


def test_equal_weights_give_the_unweighted_loss_and_zero_weights_give_zero() -> None:
    logits = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 6, 2, 2, 1, 3])
    plain = mixup_batch(torch.randn(6, 3), y, 0.2, torch.Generator().manual_seed(1))
    equal = MixedBatch(plain.inputs, plain.targets_a, plain.targets_b, plain.lam,
                       torch.full((6,), 0.4, dtype=torch.float64))
    assert mixup_cross_entropy(logits, equal).item() == pytest.approx(
        mixup_cross_entropy(logits, plain).item(), rel=1e-12)
    zero = MixedBatch(plain.inputs, plain.targets_a, plain.targets_b, plain.lam,
                      torch.zeros(6, dtype=torch.float64))
    loss = mixup_cross_entropy(logits, zero)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- the training step


def _module(unlabelled_loss: str = "none", weight: float = 1.0) -> PseudoLabelFinetuner:
    """A stage-3 module without mixup (alpha 0) that records what it logs."""
    torch.manual_seed(0)
    config = experiment_from_dict(tiny_experiment(Path("/unused")))
    model = Classifier(build_backbone(config.backbone), 3)
    module = PseudoLabelFinetuner(model, ["a", "b", "c"], config.finetune.optimizer, 0.0, 0,
                                  unlabelled_loss, weight)
    module.logged = {}
    module.log_train = lambda loss, size, **extra: module.logged.update(loss=loss, **extra)
    return module.eval()  # BatchNorm's running statistics: the same logits on every call


def test_a_weighted_batch_trains_on_the_weighted_cross_entropy() -> None:
    module = _module()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    weights = torch.tensor([1.0, 0.5, 0.25, 0.0])
    loss = module.training_step((images, labels, torch.arange(4), weights), 0)
    with torch.no_grad():
        per_sample = F.cross_entropy(module(images), labels, reduction="none")
    assert loss.item() == pytest.approx((weights * per_sample).sum().item() / 1.75, rel=1e-5)


def test_im_adds_its_weighted_information_maximisation_on_the_unlabelled_batch() -> None:
    module = _module("im", 0.3)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    others = torch.randn(5, 3, 16, 16)
    batch = {LABELLED_STREAM: (images, labels, torch.arange(4)),
             UNLABELLED_STREAM: (others, torch.full((5,), -1), torch.arange(5))}
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        cross_entropy = F.cross_entropy(module(images), labels).item()
        im = information_maximization(module(others)).item()
    assert loss.item() == pytest.approx(cross_entropy + 0.3 * im, rel=1e-5)
    assert module.logged["cross_entropy"].item() == pytest.approx(cross_entropy, rel=1e-5)
    assert module.logged["im"].item() == pytest.approx(im, rel=1e-5)


# ---------------------------------------------------------------- the data module


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory):
    config = experiment_from_dict(tiny_experiment(tmp_path_factory.mktemp("variants")))
    prepare_dataset(config.target, "target", progress=False)
    return config


def _write_table(path: Path, paths: list[Path], selected: list[int], score: bool = True,
                 scores: list[Any] | None = None) -> Path:
    """A stage-1 table: pseudo-label i % 7, score (i % 10) / 10 unless given."""
    scores = scores or [(i % 10) / 10 for i in range(len(paths))]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "path", "pseudo_label", "purity", "selected"]
                        + (["score"] if score else []))
        for i, image in enumerate(paths):
            writer.writerow([i, str(image), i % 7, 0.5, int(i in selected)]
                            + ([scores[i]] if score else []))
    return path


def _datamodule(target, table: Path, **options: Any) -> DomainDataModule:
    module = DomainDataModule(target.target, target.classes, target.preprocessing,
                              batch_size=8, train_views="pseudo_labels", pseudo_labels=table,
                              **options)
    module.setup()
    return module


def test_selected_rows_are_the_selected_images_with_their_pseudo_labels(target, tmp_path) -> None:
    module = _datamodule(target, tmp_path / "table.csv")
    paths = module.train_table.paths
    _write_table(tmp_path / "table.csv", paths, selected=[3, 10, 20, 41])
    dataset = module.train_dataloader().dataset
    assert dataset.indices.tolist() == [3, 10, 20, 41]
    assert dataset.table.labels[dataset.indices].tolist() == [3, 3, 6, 6]
    assert dataset.weights is None and len(dataset[0]) == 3


def test_weighted_rows_are_every_image_with_its_score(target, tmp_path) -> None:
    module = _datamodule(target, tmp_path / "table.csv", pseudo_label_rows="weighted")
    paths = module.train_table.paths
    _write_table(tmp_path / "table.csv", paths, selected=[3, 10])
    dataset = module.train_dataloader().dataset
    count = len(paths)
    assert dataset.indices.tolist() == list(range(count))
    assert dataset.table.labels.tolist() == [i % 7 for i in range(count)]
    np.testing.assert_allclose(dataset.weights, [(i % 10) / 10 for i in range(count)], rtol=1e-6)
    views, label, index, weight = dataset[13]
    assert (label, index) == (6, 13) and weight == pytest.approx(0.3)
    images, labels, indices, weights = next(iter(module.train_dataloader()))
    assert weights.dtype == torch.float32 and weights.shape == labels.shape


def test_im_streams_the_unselected_images_beside_the_selected_ones(target, tmp_path) -> None:
    module = _datamodule(target, tmp_path / "table.csv", unselected_stream=True)
    paths = module.train_table.paths
    selected = list(range(0, len(paths), 3))
    _write_table(tmp_path / "table.csv", paths, selected=selected)
    loader = module.train_dataloader()
    assert isinstance(loader, LabelledEpochs)
    labelled, unlabelled = loader.iterables[LABELLED_STREAM], loader.iterables[UNLABELLED_STREAM]
    assert labelled.dataset.indices.tolist() == selected
    rest = [i for i in range(len(paths)) if i not in selected]
    assert unlabelled.dataset.indices.tolist() == rest  # already longer than the selected
    assert (unlabelled.dataset.table.labels == -1).all()
    # An epoch is one pass over the selected images, known before iterating.
    assert len(loader) == len(labelled) == len(selected) // 8
    batch, _, _ = next(iter(loader))
    assert set(batch) == {LABELLED_STREAM, UNLABELLED_STREAM}
    assert batch[UNLABELLED_STREAM][0].shape == batch[LABELLED_STREAM][0].shape
    assert (batch[UNLABELLED_STREAM][1] == -1).all()
    assert set(batch[UNLABELLED_STREAM][2].tolist()) <= set(rest)


def test_few_unselected_images_repeat_until_the_selected_pass_is_covered(target,
                                                                         tmp_path) -> None:
    module = _datamodule(target, tmp_path / "table.csv", unselected_stream=True)
    paths = module.train_table.paths
    _write_table(tmp_path / "table.csv", paths, selected=list(range(5, len(paths))))
    loader = module.train_dataloader()
    unlabelled = loader.iterables[UNLABELLED_STREAM].dataset
    repeats = math.ceil((len(paths) - 5) / 5)
    assert unlabelled.indices.tolist() == [0, 1, 2, 3, 4] * repeats
    assert len(loader) == len(loader.iterables[LABELLED_STREAM])
    assert len(list(loader)) == len(loader)


@pytest.mark.parametrize(
    ("options", "table", "message"),
    [
        ({"pseudo_label_rows": "weighted"}, {"score": False}, "has no score column"),
        ({"pseudo_label_rows": "weighted"}, {"scores": ["x"] * 200}, ":2: score must be a"),
        ({"pseudo_label_rows": "weighted"}, {"scores": [-0.5] * 200}, ":2: score must be a"),
        ({"unselected_stream": True}, {"selected": range(200)}, "leaving none for "
                                                                "finetune.unlabelled_loss"),
    ],
)
def test_tables_the_variants_cannot_use_are_refused(target, tmp_path, options, table,
                                                    message) -> None:
    module = _datamodule(target, tmp_path / "table.csv", **options)
    _write_table(tmp_path / "table.csv", module.train_table.paths,
                 **{"selected": [1, 2], **table})
    with pytest.raises(ManifestError, match=message):
        module.train_dataloader()


def test_the_selected_rows_do_not_need_a_score(target, tmp_path) -> None:
    module = _datamodule(target, tmp_path / "table.csv")
    _write_table(tmp_path / "table.csv", module.train_table.paths, [1, 2], score=False)
    assert module.train_dataloader().dataset.indices.tolist() == [1, 2]
    rows = read_pseudo_labels(tmp_path / "table.csv", module.train_table)
    assert rows.scores is None and rows.selected.sum() == 2


# ---------------------------------------------------------------- configuration


def test_the_defaults_are_clup_and_the_variants_are_accepted(tmp_path) -> None:
    finetune = experiment_from_dict(tiny_experiment(tmp_path)).finetune
    assert (finetune.init, finetune.pseudo_labels, finetune.unlabelled_loss,
            finetune.unlabelled_weight) == ("swav", "selected", "none", 1.0)
    for values in ({"init": "source_classifier"}, {"pseudo_labels": "weighted"},
                   {"unlabelled_loss": "im", "unlabelled_weight": 0.3}):
        raw = tiny_experiment(tmp_path)
        raw["finetune"].update(values)
        finetune = experiment_from_dict(raw).finetune
        assert all(getattr(finetune, key) == value for key, value in values.items())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pseudo_labels": "all"}, "finetune.pseudo_labels must be one of ['selected', "
                                   "'weighted'], got 'all'"),
        ({"unlabelled_loss": "entropy"}, "finetune.unlabelled_loss must be one of ['none', "
                                         "'im'], got 'entropy'"),
        ({"init": "classifier"}, "finetune.init must be one of ['swav', 'source', "
                                 "'source_classifier', 'scratch']"),
        ({"unlabelled_weight": -1}, "finetune.unlabelled_weight must be a finite number >= 0"),
        ({"unlabelled_weight": float("inf")}, "finetune.unlabelled_weight must be a finite"),
        ({"unlabelled_weight": "high"}, "finetune.unlabelled_weight must be a number"),
        ({"unlabelled_loss": "im", "pseudo_labels": "weighted"},
         "finetune.unlabelled_loss: im trains on the images stage 1 did not select"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, values, message) -> None:
    raw = tiny_experiment(tmp_path)
    raw["finetune"].update(values)
    with pytest.raises(ConfigError) as err:
        experiment_from_dict(raw)
    assert message in str(err.value)


def test_the_source_classifier_runs_no_swav_and_each_switch_has_its_fingerprint(
        tmp_path) -> None:
    def config(**finetune: Any):
        raw = tiny_experiment(tmp_path)
        raw["finetune"].update(finetune)
        return experiment_from_dict(raw)

    assert "stage2" not in active_stages(config(init="source_classifier"))
    assert "stage2" in active_stages(config(pseudo_labels="weighted", unlabelled_loss="none"))
    variants = [config(), config(init="source"), config(init="source_classifier"),
                config(pseudo_labels="weighted"), config(unlabelled_loss="im"),
                config(unlabelled_loss="im", unlabelled_weight=0.5)]
    prints = {fingerprint(c, "stage3", data=False) for c in variants}
    assert len(prints) == len(variants)


# ---------------------------------------------------------------- one tiny run per switch


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stage3-variants")


def _add_scores(table: Path) -> None:
    """Stage 1's table with a `score` column (its purity) if stage 1 wrote none."""
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if "score" in rows[0]:
        return
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [*rows[0], "score"])
        writer.writeheader()
        writer.writerows({**row, "score": row["purity"]} for row in rows)


@pytest.mark.parametrize("finetune", [{"pseudo_labels": "weighted"},
                                      {"unlabelled_loss": "im", "unlabelled_weight": 0.5},
                                      {"init": "source_classifier"}],
                         ids=["weighted", "im", "source_classifier"])
def test_stage3_trains_a_step_with_each_switch(shared_root: Path, finetune: dict) -> None:
    """The source model and stage 1 are shared (their settings agree); stage 3 starts from
    the source model, so that no SwAV run is needed."""
    raw = tiny_experiment(shared_root, name="-".join(map(str, finetune.values())))
    raw["source"].update(head="shot", run_name="source")
    raw["cluster_labeler"]["run_name"] = "stage1"
    raw["finetune"].update({"init": "source", **finetune})
    config = experiment_from_dict(raw)
    for stage in ("source", "stage1"):
        run_stage(config, config.run_dir, stage)
    layout = RunLayout(config, config.run_dir)
    _add_scores(layout.artifact("stage1", "pseudo_labels"))
    if finetune.get("init") == "source_classifier":
        model = initial_model(config, layout.paths("stage3"))[0]
        source = load_classifier(layout.artifact("source", "model")).model
        assert model.head_kind == "shot"
        assert all(torch.equal(value, source.state_dict()[key])
                   for key, value in model.state_dict().items())
    run_stage(config, config.run_dir, "stage3")
    metrics = read_json(layout.artifact("stage3", "metrics"))
    assert 0 <= metrics["accuracy"] <= 1
    trained = load_classifier(layout.artifact("stage3", "model"))
    expected_head = "shot" if finetune.get("init") == "source_classifier" else "linear"
    assert trained.model.head_kind == expected_head
    assert all(torch.isfinite(p).all() for p in trained.model.parameters())
