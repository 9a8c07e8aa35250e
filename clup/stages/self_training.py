"""Stage 3's self-training rounds (`finetune.rounds`): what each round trains on.

Class-balanced self-training (CBST, Zou et al., ECCV 2018) grows the selected portion per
class each round; here, this project's variant, the portion is stage 1's selection ratio,
and before each round after the first the model trained so far takes the source model's
place in stage 1 (`ClusterLabeler`): it embeds and predicts every target train image, and
the experiment's `cluster_labeler` settings recluster, label and select them again. The
stage's loop is `clup.stages.pseudo_label_finetuner.self_train`; each round keeps its files
in its own folder of stage 3's (`clup.registry.round_folder`).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clup.clustering import features
from clup.clustering.pseudo_labels import pseudo_label_summary
from clup.config import ExperimentConfig, PreprocessingConfig
from clup.data.datamodule import DomainDataModule, read_pseudo_labels
from clup.data.manifest import ImageTable
from clup.io import write_json, write_text
from clup.models.checkpoint import Classifier
from clup.registry import round_file, round_folder
from clup.stages.cluster_labeler import ClusterLabeler, pseudo_label_csv
from clup.stages.common import finish_loggers, make_trainer


def selection_ratios(first: float, final: float, rounds: int) -> list[float]:
    """Each round's selection ratio: linear from `first` (round 1) to `final` (the last)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}.")
    return np.linspace(first, final, rounds).tolist()


def last_finished_round(stage_dir: Path, rounds: int) -> int:
    """The last of the `rounds` rounds whose model is saved, 0 if none: a restarted stage
    goes on after it."""
    return max((number for number in range(1, rounds + 1)
                if round_file(stage_dir, number, "model").is_file()), default=0)


def write_round_table(config: ExperimentConfig, model: Classifier,
                      preprocessing: PreprocessingConfig, stage_dir: Path, stage: str,
                      number: int, ratio: float) -> None:
    """Round `number`'s pseudo-label table and summary in its folder, in stage 1's formats:
    every rank embeds its share of the target train images with `model`, rank 0 reclusters
    and selects `ratio` per class; every rank returns once the table is written."""
    datamodule = DomainDataModule(
        config.require_target(), config.classes, preprocessing,
        eval_batch_size=config.cluster_labeler.batch_size, runtime=config.runtime,
    )
    datamodule.prepare_data()
    datamodule.setup()
    table = datamodule.train_table
    labeler = ClusterLabeler(model, replace(config.cluster_labeler, selection_ratio=ratio),
                             config.seed, round_file(stage_dir, number, "feature_cache"),
                             len(table))
    trainer = make_trainer(config, round_folder(stage_dir, number), stage)
    if not labeler.features_complete:
        trainer.predict(labeler, datamodule=datamodule, return_predictions=False)
    if trainer.is_global_zero:
        labels = labeler.pseudo_label(*features.load(labeler.feature_dir))
        write_text(round_file(stage_dir, number, "pseudo_labels"),
                   pseudo_label_csv(table, labels))
        summary = pseudo_label_summary(labels.pseudo_label, labels.selected,
                                       len(config.classes),
                                       table.labels if table.has_labels else None)
        write_json(round_file(stage_dir, number, "summary"),
                   {"round": number, "selection_ratio": ratio, **summary})
        # The table is what a rerun reads: the embeddings are not needed any more.
        shutil.rmtree(labeler.feature_dir)
    trainer.strategy.barrier("self-training round's pseudo-labels written")
    finish_loggers(trainer)


def round_entry(number: int, ratio: float, pseudo_labels: Path, table: ImageTable,
                num_classes: int) -> dict[str, Any]:
    """What round `number` trained on, from its pseudo-label table: its ratio, how many
    images it selected and, where the train split has labels, how many of them rightly."""
    rows = read_pseudo_labels(pseudo_labels, table)
    truth = table.labels[rows.indices] if table.has_labels else None
    summary = pseudo_label_summary(rows.labels, rows.selected, num_classes, truth)
    kept = ("num_selected", "selected_accuracy")
    return {"round": number, "selection_ratio": ratio,
            **{key: summary[key] for key in kept if key in summary}}
