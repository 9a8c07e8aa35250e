"""Stage 3: the SwAV backbone and a new head, trained on the selected pseudo-labels with mixup.

The network may come from elsewhere for ablations (`finetune.init`); the variants of what it
trains on (`finetune.pseudo_labels`, `finetune.unlabelled_loss`) and self-training rounds
that relabel the target with the model trained so far (`finetune.rounds`,
`clup.stages.self_training`) are switches of this stage."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from clup.config import BackboneConfig, ExperimentConfig, OptimizerConfig, PreprocessingConfig
from clup.data.datamodule import LABELLED_STREAM, UNLABELLED_STREAM, DomainDataModule
from clup.losses import information_maximization
from clup.mixup import mixup_batch, mixup_cross_entropy
from clup.models.backbones import Backbone, build_backbone
from clup.models.checkpoint import Classifier, load_backbone, load_classifier, save_classifier
from clup.registry import StagePaths, round_file, round_folder
from clup.stages.common import (
    ClassifierModule,
    close_stage,
    evaluate_and_save,
    finish_loggers,
    fit_and_evaluate,
    fit_stage,
    gather_rows,
    load_source,
    make_trainer,
    source_checkpoint,
)
from clup.stages.self_training import (
    last_finished_round,
    round_entry,
    selection_ratios,
    write_round_table,
)


class PseudoLabelFinetuner(ClassifierModule):
    """Cross-entropy with mixup; the whole network trains. The last epoch is reported:
    nothing is selected on the target test split.

    A batch with a fourth item (per-sample weights) gets the weighted cross-entropy of
    `mixup_cross_entropy`. With `unlabelled_loss="im"` a batch is a dict of a `labelled` and
    an `unlabelled` batch, and `unlabelled_weight` times SHOT's information maximisation on
    the unlabelled images (their own forward pass, unmixed) is added to the loss.
    """

    def __init__(self, model: Classifier, classes: list[str], optimizer: OptimizerConfig,
                 mixup_alpha: float, seed: int, unlabelled_loss: str = "none",
                 unlabelled_weight: float = 1.0) -> None:
        super().__init__(model, classes, optimizer)
        self.mixup_alpha = mixup_alpha
        self.generator = torch.Generator().manual_seed(seed)
        self.unlabelled_loss = unlabelled_loss
        self.unlabelled_weight = unlabelled_weight

    def on_train_start(self) -> None:
        """Each rank reads the pseudo-label table itself (stage 1's, or a self-training
        round's): check they all train on one subset."""
        loaders = self.trainer.train_dataloader
        dataset = (loaders[LABELLED_STREAM] if isinstance(loaders, dict) else loaders).dataset
        labels = dataset.table.labels[dataset.indices]
        read = dataset.indices.tobytes() + labels.tobytes()
        if dataset.weights is not None:
            read += dataset.weights[dataset.indices].tobytes()
        digest = hashlib.sha256(read).digest()
        mine = torch.tensor(int.from_bytes(digest[:7], "big"), device=self.device)
        if (gather_rows(self, mine[None]) != mine).any():
            raise RuntimeError("the ranks read different pseudo-labelled subsets from "
                               "the pseudo-label table; was it rewritten during stage 3?")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        labelled = batch if self.unlabelled_loss == "none" else batch[LABELLED_STREAM]
        images, pseudo_labels = labelled[0], labelled[1]
        weights = labelled[3] if len(labelled) > 3 else None
        mixed = mixup_batch(images, pseudo_labels, self.mixup_alpha, self.generator, weights)
        loss = mixup_cross_entropy(self(mixed.inputs), mixed)
        if self.unlabelled_loss == "none":
            self.log_train(loss, len(pseudo_labels))
            return loss
        unlabelled = information_maximization(self(batch[UNLABELLED_STREAM][0]))
        total = loss + self.unlabelled_weight * unlabelled
        self.log_train(total, len(pseudo_labels), cross_entropy=loss, im=unlabelled)
        return total


def initial_backbone(config: ExperimentConfig, paths: StagePaths
                     ) -> tuple[Backbone, BackboneConfig, PreprocessingConfig]:
    """The backbone stage 3 starts from, with its architecture and input settings."""
    if config.finetune.init == "swav":
        backbone = load_backbone(paths.input("backbone"), config.backbone)
        return backbone, config.backbone, config.preprocessing
    if config.finetune.init == "source":
        source = load_classifier(source_checkpoint(config, paths))
        return source.model.backbone, source.backbone, source.preprocessing
    return build_backbone(config.backbone), config.backbone, config.preprocessing


def initial_model(config: ExperimentConfig, paths: StagePaths
                  ) -> tuple[Classifier, BackboneConfig, PreprocessingConfig]:
    """The network stage 3 starts from: the whole source model (`source_classifier`), or
    the backbone of `initial_backbone` under a new linear head."""
    if config.finetune.init == "source_classifier":
        source = load_source(config, paths)  # its head predicts the experiment's classes
        return source.model, source.backbone, source.preprocessing
    backbone, backbone_config, preprocessing = initial_backbone(config, paths)
    return Classifier(backbone, len(config.classes)), backbone_config, preprocessing


def finetuner(config: ExperimentConfig, model: Classifier) -> PseudoLabelFinetuner:
    """Stage 3's module on `model`, as the `finetune` settings say."""
    finetune = config.finetune
    return PseudoLabelFinetuner(model, config.classes, finetune.optimizer,
                                finetune.mixup_alpha, config.seed, finetune.unlabelled_loss,
                                finetune.unlabelled_weight)


def finetune_data(config: ExperimentConfig, preprocessing: PreprocessingConfig,
                  pseudo_labels: Path) -> DomainDataModule:
    """The target domain, trained on the pseudo-label table `pseudo_labels`."""
    finetune = config.finetune
    return DomainDataModule(
        config.require_target(), config.classes, preprocessing,
        batch_size=finetune.batch_size, runtime=config.runtime,
        train_views="pseudo_labels",
        pseudo_labels=pseudo_labels,
        pseudo_label_rows=finetune.pseudo_labels,
        unselected_stream=finetune.unlabelled_loss != "none",
        color_jitter=finetune.color_jitter, augmentation=finetune.augmentation,
    )


def run(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """Fine-tune into the stage's `model` and write its `metrics`; with `finetune.rounds`
    > 1, in self-training rounds (`self_train`)."""
    if config.finetune.rounds > 1:
        return self_train(config, paths)
    model, backbone_config, preprocessing = initial_model(config, paths)
    metrics = fit_and_evaluate(config, paths, finetuner(config, model),
                               finetune_data(config, preprocessing, paths.input("pseudo_labels")),
                               config.finetune.epochs, backbone_config, train_split=True)
    return {"target_test_accuracy": metrics["accuracy"]}


def self_train(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """`finetune.rounds` rounds (`train_rounds`); the stage's `model` and `metrics` are the
    last round's, and the metrics list each round's selection under `rounds`."""
    finetune = config.finetune
    ratios = selection_ratios(config.cluster_labeler.selection_ratio,
                              finetune.final_selection_ratio, finetune.rounds)
    model, backbone_config, preprocessing = train_rounds(config, paths, ratios)
    datamodule = finetune_data(config, preprocessing, round_table(paths, finetune.rounds))
    datamodule.prepare_data()
    datamodule.setup()
    module = ClassifierModule(model, config.classes, finetune.optimizer)
    trainer = make_trainer(config, paths.folder, paths.name)
    rounds = [round_entry(number, ratio, round_table(paths, number), datamodule.train_table,
                          len(config.classes))
              for number, ratio in enumerate(ratios, start=1)]
    metrics = evaluate_and_save(paths, trainer, module, datamodule, backbone_config,
                                train_split=True, extra={"rounds": rounds})
    finish_loggers(trainer)
    return {"target_test_accuracy": metrics["accuracy"]}


def train_rounds(config: ExperimentConfig, paths: StagePaths, ratios: list[float]
                 ) -> tuple[Classifier, BackboneConfig, PreprocessingConfig]:
    """Train round after round, each in its own folder on its own table at its ratio
    (`clup.stages.self_training`), from the weights the round before left, and keep each
    round's model there; a restarted stage loads the last finished round and goes on."""
    folder = paths.folder
    finished = last_finished_round(folder, len(ratios))
    if finished:
        last = load_classifier(round_file(folder, finished, "model"))
        model, backbone_config, preprocessing = last.model, last.backbone, last.preprocessing
    else:
        model, backbone_config, preprocessing = initial_model(config, paths)
    for number in range(finished + 1, len(ratios) + 1):
        table = round_table(paths, number)
        if number > 1 and not table.is_file():
            write_round_table(config, model, preprocessing, folder, paths.name, number,
                              ratios[number - 1])
        trainer = fit_stage(config, round_folder(folder, number), paths.name,
                            finetuner(config, model),
                            finetune_data(config, preprocessing, table), config.finetune.epochs)
        if trainer.is_global_zero:
            save_classifier(round_file(folder, number, "model"), model, config.classes,
                            backbone_config, preprocessing,
                            metadata={"stage": paths.name, "round": number})
        close_stage(trainer, round_folder(folder, number))
    return model, backbone_config, preprocessing


def round_table(paths: StagePaths, number: int) -> Path:
    """The pseudo-label table round `number` trains on: stage 1's for the first round."""
    return paths.input("pseudo_labels") if number == 1 else round_file(paths.folder, number,
                                                                        "pseudo_labels")
