"""The source-free baselines of baselines.md: SHOT, NRC, AaD and Tent adapt the source model.

Each method is one LightningModule on `SFDAAdapter`, which holds what they share: the
evaluation (`ClassifierModule`'s), SHOT's SGD schedule, training progress and a pass over the
target train split. The losses are the plain functions of `clup.losses.sfda`. Every method
trains on the target train split with the training augmentation and no labels; the adapted
classifier is saved as `adapt/model.ckpt`.

Resuming from `adapt/checkpoints/last.ckpt` restores the weights, optimiser and schedule; the
state computed from the target data is rebuilt from the restored model: SHOT's pseudo-labels
at the start of every epoch anyway, NRC's and AaD's banks at the start of every fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clup.config import ExperimentConfig, OptimizerConfig, SFDAConfig
from clup.data.datamodule import DomainDataModule
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
from clup.models.checkpoint import Classifier
from clup.stages.cluster_labeler import load_source
from clup.stages.common import ClassifierModule, fit_and_evaluate, gather_rows


class SFDAAdapter(ClassifierModule):
    """What the baselines share: SGD with momentum, Nesterov and SHOT's per-step decay
    `lr * (1 + 10 p)^-0.75` (the schedule of SHOT's, NRC's and AaD's code), the backbone at
    `backbone_lr_scale` of the rate of the bottleneck and classifier."""

    needs_shot_head: ClassVar[bool] = True
    trains_classifier: ClassVar[bool] = True

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        super().__init__(model, classes, OptimizerConfig(
            name="sgd", lr=config.lr, momentum=config.momentum, nesterov=True,
            weight_decay=config.weight_decay,
        ))
        self.sfda = config
        self.total_steps = 1

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_config
        # The bottleneck's group first: `train/lr` logs the first group, the rate `sfda.lr`.
        groups = [{"params": list(self.model.bottleneck.parameters()), "lr": opt.lr}]
        if self.trains_classifier:
            groups.append({"params": list(self.model.head.parameters()), "lr": opt.lr})
        groups.append({"params": list(self.model.backbone.parameters()),
                       "lr": opt.lr * self.sfda.backbone_lr_scale})
        optimizer = torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum,
                                    nesterov=opt.nesterov and opt.momentum > 0,
                                    weight_decay=opt.weight_decay)
        self.total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
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

    trains_classifier = False

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        super().__init__(model, classes, config)
        self.model.head.requires_grad_(False)
        self.pseudo_labels = torch.zeros(0, dtype=torch.long)

    def on_train_epoch_start(self) -> None:
        self.pseudo_labels = shot_centroid_labels(*self.target_outputs())
        table = self.trainer.datamodule.train_table
        if table.has_labels:  # diagnosis only: how right SHOT's pseudo-labels are
            correct = self.pseudo_labels.cpu().numpy() == table.labels
            self.log("train/pseudo_label_accuracy", float(correct.mean()))

    def adaptation_loss(self, images: Tensor, indices: Tensor) -> Tensor:
        return shot_loss(self(images), self.pseudo_labels[indices], self.sfda.beta)


class NeighbourhoodAdapter(SFDAAdapter):
    """NRC's and AaD's state: a bank of L2-normalised features and one of softmax scores.

    Filled by one pass at the start of the fit (of a resumed one too: the banks are not saved),
    then each step writes the batch's current features and scores at its indices, so the
    neighbours the loss looks up include the batch as it is now.
    """

    neighbour_counts: ClassVar[tuple[str, ...]] = ("k",)

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


class NRCAdapter(NeighbourhoodAdapter):
    """NRC (Yang et al., NeurIPS 2021, "Exploiting the intrinsic neighborhood structure").

    Every layer trains, the classifier too, as in the reference code (Albert0147/NRC_SFDA).
    """

    neighbour_counts = ("k", "kk")

    def neighbourhood_loss(self, probs: Tensor, indices: Tensor) -> Tensor:
        return nrc_loss(probs, self.feature_bank, self.score_bank, indices,
                        self.sfda.k, self.sfda.kk)


class AaDAdapter(NeighbourhoodAdapter):
    """AaD (Yang et al., NeurIPS 2022, "Attracting and dispersing").

    Every layer trains, the classifier too, as in the reference code (Albert0147/AaD_SFDA);
    the dispersion weight decays with the training progress.
    """

    def neighbourhood_loss(self, probs: Tensor, indices: Tensor) -> Tensor:
        alpha = aad_alpha(self.progress, self.sfda.alpha0, self.sfda.alpha_decay)
        self.log("train/alpha", alpha, batch_size=len(indices))
        return aad_loss(probs, self.feature_bank, self.score_bank, indices, self.sfda.k, alpha)


class TentAdapter(SFDAAdapter):
    """Tent (Wang et al., ICLR 2021, "Fully test-time adaptation by entropy minimization").

    Only the BatchNorm affine parameters train, with Adam, one step per batch, on the entropy
    of the predictions. In training the BatchNorm layers normalise with the batch's
    statistics; their running statistics follow the target meanwhile, and the adapted model
    is evaluated with those (Tent's own code keeps using batch statistics at test time).
    """

    needs_shot_head = False

    def __init__(self, model: Classifier, classes: list[str], config: SFDAConfig) -> None:
        super().__init__(model, classes, config)
        self.model.requires_grad_(False)
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            raise ConfigError("method tent needs a source model with BatchNorm layers")
        for norm in norms:
            norm.requires_grad_(True)

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=self.sfda.tent_lr)

    def adaptation_loss(self, images: Tensor, indices: Tensor) -> Tensor:
        return tent_loss(self(images))


ADAPTERS: dict[str, type[SFDAAdapter]] = {
    "shot": SHOTAdapter, "nrc": NRCAdapter, "aad": AaDAdapter, "tent": TentAdapter,
}


def run(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Adapt the source model into `adapt/model.ckpt` and write `adapt/metrics.json`."""
    if config.method not in ADAPTERS:
        raise ConfigError(f"method must be one of {list(ADAPTERS)} to adapt, "
                          f"got {config.method!r}")
    adapter = ADAPTERS[config.method]
    source = load_source(config, run_dir)
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
        train_views="unlabelled", color_jitter=0.0,
    )
    metrics = fit_and_evaluate(config, run_dir / "adapt", "adapt", module, datamodule,
                               config.sfda.epochs, source.backbone)
    return {"target_test_accuracy": metrics["accuracy"]}
