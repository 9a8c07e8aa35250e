"""The source-free baselines of baselines.md: SHOT, NRC, AaD and Tent adapt the source model.

Each method is one LightningModule on `SFDAAdapter`, which holds what they share: the
evaluation (`ClassifierModule`'s), SHOT's SGD schedule, training progress and a pass over the
target train split. The losses are the plain functions of `clup.losses.sfda`. Every method
trains on the target train split with the training augmentation and no labels; the adapted
classifier is saved as the stage's `model`.

Resuming from the stage's resume checkpoint restores the weights, optimiser and schedule; the
state computed from the target data is rebuilt from the restored model: SHOT's pseudo-labels
at the start of every epoch anyway, NRC's and AaD's banks at the start of every fit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from clup.clustering.diagnostics import class_shares, knn_label_agreement
from clup.config import ExperimentConfig, OptimizerConfig, SFDAConfig
from clup.data.datamodule import DomainDataModule
from clup.data.datasets import read_dataset
from clup.errors import ConfigError
from clup.losses.sfda import (
    aad_alpha,
    aad_loss,
    nrc_loss,
    shot_centroid_labels,
    shot_loss,
    shot_lr_factor,
    tent_loss,
)
from clup.models.checkpoint import Classifier, batch_statistics_norms, use_batch_statistics
from clup.presets import require_resolved, resolve_sfda, unresolved
from clup.registry import StagePaths
from clup.stages.common import (
    ClassifierModule,
    fit_and_evaluate,
    gather_rows,
    load_source,
    make_optimizer,
)


class SFDAAdapter(ClassifierModule):
    """What the baselines share: SGD with momentum, Nesterov and, with `sfda.lr_decay`,
    SHOT's per-step decay `lr * (1 + 10 p)^-0.75` (the schedule of SHOT's code, and of NRC's
    and AaD's where they call it), the backbone at `backbone_lr_scale` of the rate of the
    bottleneck and classifier."""

    method: ClassVar[str]
    needs_shot_head: ClassVar[bool] = True
    trains_classifier: ClassVar[bool] = True
    one_pass: ClassVar[bool] = False
    """One epoch whatever `sfda.epochs` (Tent's online pass)."""

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        require_resolved(config, self.method)
        super().__init__(model, classes, OptimizerConfig(
            name="sgd", lr=config.lr, momentum=config.momentum, nesterov=True,
            weight_decay=config.weight_decay,
        ))
        self.sfda = config
        self.total_steps = 1
        self.diagnostics: dict[str, Any] = {}
        """Written into `metrics.json` beside the test metrics (see `record_epoch_shares`)."""

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_config
        # The bottleneck's group first: `train/lr` logs the first group, the rate `sfda.lr`.
        groups = [{"params": list(self.model.bottleneck.parameters()), "lr": opt.lr}]
        if self.trains_classifier:
            groups.append({"params": list(self.model.head.parameters()), "lr": opt.lr})
        groups.append({"params": list(self.model.backbone.parameters()),
                       "lr": opt.lr * self.sfda.backbone_lr_scale})
        optimizer = make_optimizer(groups, opt)
        self.total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        if not self.sfda.lr_decay:
            return optimizer
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: shot_lr_factor(min(step / self.total_steps, 1.0)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @property
    def progress(self) -> float:
        """Optimiser steps taken over steps planned, in [0, 1]."""
        return min(self.global_step / self.total_steps, 1.0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, _, indices = batch
        loss = self.adaptation_loss(images, indices)
        self.log_train(loss, len(indices))
        return loss

    def adaptation_loss(self, images: Tensor, indices: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def true_labels(self) -> Tensor | None:
        """The target train split's labels, for diagnosis only; None when it has none."""
        table = self.trainer.datamodule.train_table
        return torch.as_tensor(table.labels) if table.has_labels else None

    def record_start_shares(self, probs: Tensor) -> None:
        """The share of the target train split predicted as each class by the model the fit
        starts from (the source model; a resumed fit's restored one), as
        `class_share_at_start` in `metrics.json`."""
        self.diagnostics["class_share_at_start"] = dict(
            zip(self.classes, self.shares(probs), strict=True))

    def record_epoch_shares(self, shares: list[float]) -> None:
        """The share of the target train split predicted as each class after an epoch: logged
        per class as `train/class_share/<class>` with `train/largest_class_share`, and kept
        for `metrics.json` as `class_share_per_epoch` (class -> list over the fit's epochs)."""
        per_epoch = self.diagnostics.setdefault(
            "class_share_per_epoch", {name: [] for name in self.classes})
        for name, share in zip(self.classes, shares, strict=True):
            per_epoch[name].append(share)
            self.log(f"train/class_share/{name}", share)
        self.log("train/largest_class_share", max(shares))

    def shares(self, probs: Tensor) -> list[float]:
        return class_shares(probs.argmax(dim=1), len(self.classes))

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.test_metrics.update(self.diagnostics)

    @torch.no_grad()
    def target_outputs(self) -> tuple[Tensor, Tensor]:
        """Classifier input features and softmax of every target train image, row = index.

        Eval mode and eval transforms, as in the reference code: what every later step relies
        on should not carry augmentation noise or one batch's statistics.
        """
        training = self.model.training
        self.model.eval()
        plugin, strategy = self.trainer.precision_plugin, self.trainer.strategy
        features, probs, order = [], [], []
        with plugin.predict_step_context():
            for batch in self.trainer.datamodule.predict_dataloader():
                images, _, indices = strategy.batch_to_device(plugin.convert_input(batch))
                batch_features = self.model.features(images)
                probs.append(self.model.head(batch_features).float().softmax(dim=1))
                features.append(batch_features.float())
                order.append(indices)
        self.model.train(training)
        rows = torch.cat(order).argsort()
        return torch.cat(features)[rows], torch.cat(probs)[rows]


class SHOTAdapter(SFDAAdapter):
    """SHOT (Liang et al., ICML 2020, "Do we really need to access the source data?").

    The source classifier stays fixed (hypothesis transfer); backbone and bottleneck learn
    `beta * CE(logits, pseudo-label) + information maximisation`, the pseudo-labels coming
    from SHOT's centroids over the whole target train split at the start of every epoch.
    """

    method = "shot"
    trains_classifier = False

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        super().__init__(model, classes, config)
        self.model.head.requires_grad_(False)
        self.pseudo_labels = torch.zeros(0, dtype=torch.long)
        self.epoch_end_outputs: tuple[Tensor, Tensor] | None = None

    def on_train_epoch_start(self) -> None:
        # The pass at the end of the last epoch saw these very weights; at the fit's start
        # (or a resumed one's) there is none yet.
        outputs = self.epoch_end_outputs or self.target_outputs()
        if self.epoch_end_outputs is None:
            self.record_start_shares(outputs[1])
        self.epoch_end_outputs = None
        self.pseudo_labels = shot_centroid_labels(*outputs)
        labels = self.true_labels
        if labels is not None:  # diagnosis only: how right SHOT's pseudo-labels are
            correct = self.pseudo_labels.cpu() == labels
            self.log("train/pseudo_label_accuracy", float(correct.double().mean()))

    def on_train_epoch_end(self) -> None:
        self.epoch_end_outputs = self.target_outputs()
        self.record_epoch_shares(self.shares(self.epoch_end_outputs[1]))

    def adaptation_loss(self, images: Tensor, indices: Tensor) -> Tensor:
        # SHOT's VisDA setup trains its first epoch on information maximisation alone.
        beta = self.sfda.beta if self.current_epoch >= self.sfda.pseudo_label_from_epoch else 0.0
        return shot_loss(self(images), self.pseudo_labels[indices], beta)


class NeighbourhoodAdapter(SFDAAdapter):
    """NRC's and AaD's state: a bank of L2-normalised features and one of softmax scores.

    Filled by one pass at the start of the fit (of a resumed one too: the banks are not saved),
    then each step writes the batch's current features and scores at its indices, so the
    neighbours the loss looks up include the batch as it is now.
    """

    neighbour_counts: ClassVar[tuple[str, ...]] = ("k", "k_late")

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        super().__init__(model, classes, config)
        self.feature_bank = torch.zeros(0)
        self.score_bank = torch.zeros(0)

    def on_train_start(self) -> None:
        features, self.score_bank = self.target_outputs()
        self.feature_bank = F.normalize(features, dim=1)
        for name in self.neighbour_counts:
            if getattr(self.sfda, name) >= len(self.feature_bank):
                raise ConfigError(
                    f"sfda.{name} ({getattr(self.sfda, name)}) must be smaller than the number "
                    f"of target train images ({len(self.feature_bank)})"
                )
        self.record_start_shares(self.score_bank)
        labels = self.true_labels
        if labels is not None:
            # Diagnosis only: do the K neighbours the loss starts from share the true label?
            # Measured on the bank the fit starts from: the source model's (a resumed fit's
            # restored model's).
            k = self.sfda.k
            agreement = knn_label_agreement(self.feature_bank, labels, k)
            self.diagnostics.update(knn_label_agreement=agreement, knn_label_agreement_k=k)
            self.log("train/knn_label_agreement", agreement)

    def on_train_epoch_end(self) -> None:
        # The score bank holds each image's softmax as of its last step this epoch.
        self.record_epoch_shares(self.shares(self.score_bank))

    def adaptation_loss(self, images: Tensor, indices: Tensor) -> Tensor:
        features = self.model.features(images)
        # The banks are float32 whatever the precision; the loss multiplies probs with them.
        probs = self.model.head(features).float().softmax(dim=1)
        with torch.no_grad():
            # Every rank writes every rank's batch, so the banks stay identical across ranks.
            written = gather_rows(self, indices)
            self.feature_bank[written] = gather_rows(self, F.normalize(features.float(), dim=1))
            self.score_bank[written] = gather_rows(self, probs.detach())
        return self.neighbourhood_loss(probs, indices)

    def neighbourhood_loss(self, probs: Tensor, indices: Tensor) -> Tensor:
        raise NotImplementedError

    def neighbours(self, name: str) -> int:
        """`sfda.k` (or `kk`), or `k_late` once past half of the training when it is set: the
        official Office-Home scripts switch (NRC_SFDA office-home/train_tar.py:223-226)."""
        late = getattr(self.sfda, f"{name}_late")
        return late if late and self.progress > 0.5 else getattr(self.sfda, name)


class NRCAdapter(NeighbourhoodAdapter):
    """NRC (Yang et al., NeurIPS 2021, "Exploiting the intrinsic neighborhood structure").

    Every layer trains, the classifier too, as in the reference code (Albert0147/NRC_SFDA).
    """

    method = "nrc"
    neighbour_counts = ("k", "kk", "k_late", "kk_late")

    def neighbourhood_loss(self, probs: Tensor, indices: Tensor) -> Tensor:
        return nrc_loss(probs, self.feature_bank, self.score_bank, indices,
                        self.neighbours("k"), self.neighbours("kk"))


class AaDAdapter(NeighbourhoodAdapter):
    """AaD (Yang et al., NeurIPS 2022, "Attracting and dispersing").

    Every layer trains, the classifier too, as in the reference code (Albert0147/AaD_SFDA);
    the dispersion weight decays with the training progress.
    """

    method = "aad"

    def neighbourhood_loss(self, probs: Tensor, indices: Tensor) -> Tensor:
        alpha = aad_alpha(self.progress, self.sfda.alpha0, self.sfda.alpha_decay)
        self.log("train/alpha", alpha, batch_size=len(indices))
        return aad_loss(probs, self.feature_bank, self.score_bank, indices,
                        self.neighbours("k"), alpha)


class TentAdapter(SFDAAdapter):
    """Tent (Wang et al., ICLR 2021, "Fully test-time adaptation by entropy minimization"),
    `sfda.tent_variant: epochs`; `PublishedTentAdapter` is Tent as published.

    Every other parameter frozen, the affine parameters of the `adapted_norms` layers train
    with Adam at `sfda.tent_lr` (torch's defaults: betas (0.9, 0.999), no weight decay, as
    DequanWang/tent cifar10c.py:104-108 and cfgs/tent.yaml:31-35 @ e9e926a), one step per
    batch, on the mean entropy of the predictions (tent.py:55-60). This variant adapts every
    BatchNorm layer, `BatchNorm1d` included, for `sfda.epochs` epochs; in training they
    normalise with the batch's statistics while their running statistics follow the target,
    and the adapted model is evaluated with those running statistics.
    """

    method = "tent"
    needs_shot_head = False
    adapted_norms: ClassVar[tuple[type[nn.Module], ...]] = (_BatchNorm,)

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        super().__init__(model, classes, config)
        self.model.requires_grad_(False)
        self.norms = [m for m in self.model.modules() if isinstance(m, self.adapted_norms)]
        if not self.norms:
            kinds = " or ".join(kind.__name__.lstrip("_") for kind in self.adapted_norms)
            raise ConfigError(f"method tent (sfda.tent_variant: {config.tent_variant}) needs "
                              f"a source model with {kinds} layers")
        for norm in self.norms:
            norm.requires_grad_(True)

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=self.sfda.tent_lr)

    def adaptation_loss(self, images: Tensor, indices: Tensor) -> Tensor:
        return tent_loss(self(images))


class PublishedTentAdapter(TentAdapter):
    """Tent as published (`sfda.tent_variant: published`, DequanWang/tent @ e9e926a).

    Only the weight and bias of every `BatchNorm2d` train (tent.py:64-80, :101-105), and
    those layers keep no running statistics: they normalise with the batch's statistics in
    training and at evaluation alike (tent.py:106-109; the saved classifier records it, see
    `clup.models.checkpoint.use_batch_statistics`). One online pass (not episodic, conf.py:39)
    with one step per batch (conf.py:70) over the target train split, whatever `sfda.epochs`,
    in the seed's shuffled order (Tent reads CIFAR-10-C in file order, cifar10c.py:44-46; a
    split listed by class would give one-class batches); then the target test split is
    evaluated, without gradient, each test batch normalised with its own statistics.

    Tent's code puts the whole model in training mode (tent.py:99); its model, RobustBench's
    WideResNet-28-10 (cfgs/tent.yaml:3), has only BatchNorm2d norms and no dropout
    (RobustBench robustbench/model_zoo/architectures/wide_resnet.py @ 3c3ee54: dropRate 0.0),
    so the choice has no effect there. Here the rest of the model stays in evaluation mode:
    dropout is off and a `BatchNorm1d` (SHOT's bottleneck) keeps the source's running
    statistics, so only the BatchNorm2d affine parameters differ from the source model.
    (Under tent.py's `model.train()` a BatchNorm1d would normalise with batch statistics
    and update its running statistics.)

    Protocol: the published accuracy is that of each batch's prediction before its update,
    on the stream being adapted (tent.py:55-61); clup adapts on the train split and scores
    the held-out test split, as for the other methods. When the train split has labels the
    stream's pre-update accuracy is kept too, a diagnostic the method never reads:
    `train/online_accuracy` in the log, `online_train_accuracy` in `metrics.json`.
    """

    adapted_norms = (nn.BatchNorm2d,)
    one_pass = True

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        super().__init__(model, classes, config)
        for norm in self.norms:
            use_batch_statistics(norm)
        self.stream_counts = torch.zeros(2)
        self.stream_predictions = torch.zeros(len(classes))
        self.online_accuracy: float | None = None

    def on_train_start(self) -> None:
        self.model.eval()
        # Found by name: with `sync_batchnorm` Lightning has replaced the layers.
        for name in batch_statistics_norms(self.model):
            self.model.get_submodule(name).train()
        self.stream_counts = torch.zeros(2, device=self.device)
        self.stream_predictions = torch.zeros(len(self.classes), device=self.device)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels, indices = batch
        logits = self(images)
        predictions = logits.argmax(dim=1)
        correct = (predictions == labels).sum()
        self.stream_counts += torch.stack([correct, correct.new_tensor(len(labels))])
        self.stream_predictions += torch.bincount(predictions, minlength=len(self.classes))
        loss = tent_loss(logits)
        self.log_train(loss, len(indices))
        return loss

    def on_train_epoch_end(self) -> None:
        # The share of each class among the online predictions, each made before its step.
        counts = self.trainer.strategy.reduce(self.stream_predictions, reduce_op="sum")
        self.record_epoch_shares((counts / counts.sum().clamp(min=1)).tolist())
        if not self.trainer.datamodule.train_table.has_labels:
            return
        correct, seen = self.trainer.strategy.reduce(self.stream_counts, reduce_op="sum")
        self.online_accuracy = float(correct / seen)
        self.log("train/online_accuracy", self.online_accuracy)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.online_accuracy is not None:
            self.test_metrics["online_train_accuracy"] = self.online_accuracy


ADAPTERS: dict[str, type[SFDAAdapter]] = {
    "shot": SHOTAdapter, "nrc": NRCAdapter, "aad": AaDAdapter, "tent": PublishedTentAdapter,
}
TENT_VARIANTS: dict[str, type[SFDAAdapter]] = {
    "published": PublishedTentAdapter, "epochs": TentAdapter,
}


def run(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """Adapt the source model into the stage's `model` and write its `metrics`."""
    if config.method not in ADAPTERS:
        raise ConfigError(f"method must be one of {list(ADAPTERS)} to adapt, "
                          f"got {config.method!r}")
    adapter = (TENT_VARIANTS[config.sfda.tent_variant] if config.method == "tent"
               else ADAPTERS[config.method])
    if unresolved(config.sfda, config.method):  # run without the driver, which resolves it
        target = read_dataset(config.require_target(), config.classes, "target")
        resolve_sfda(config, len(target["train"]))
    source = load_source(config, paths)
    if adapter.needs_shot_head and source.model.head_kind != "shot":
        raise ConfigError(
            f"method {config.method}: SHOT, NRC and AaD need `source.head: shot`, but the "
            f"source model has a {source.model.head_kind} head; set source.head: shot and "
            "train the source model again"
        )
    module = adapter(source.model, config.classes, config.sfda)
    datamodule = DomainDataModule(
        config.require_target(), config.classes, source.preprocessing,
        batch_size=config.sfda.batch_size, runtime=config.runtime,
        train_views="unlabelled" if config.sfda.augment else "unaugmented", color_jitter=0.0,
    )
    metrics = fit_and_evaluate(config, paths, module, datamodule,
                               1 if adapter.one_pass else config.sfda.epochs, source.backbone,
                               train_split=True)
    return {"target_test_accuracy": metrics["accuracy"]}
