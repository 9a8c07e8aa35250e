"""What every stage shares: the source model, optimiser and schedule, evaluation, trainer
and loggers, and the end of a fit (save on rank 0, close the loggers, drop the resume
checkpoints)."""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from clup.config import (
    BackboneConfig,
    ExperimentConfig,
    OptimizerConfig,
    WandbConfig,
    config_to_dict,
)
from clup.data.datamodule import DomainDataModule
from clup.data.manifest import UNLABELLED
from clup.distributed import cluster_environment, device_layout
from clup.errors import ConfigError
from clup.evaluation import classification_metrics
from clup.io import write_json
from clup.models.checkpoint import Classifier, LoadedClassifier, load_classifier, save_classifier
from clup.registry import REQUEUE_CHECKPOINTS, STAGE_FILES, StagePaths, stage_file
from clup.speed import FollowThreadShare, SpeedSettings
from clup.validators import VALIDATORS, label_free_measures


def source_checkpoint(config: ExperimentConfig, paths: StagePaths) -> Path:
    """The experiment's source model, or the one the driver trained (the stage's declared
    input `source_model`)."""
    if config.source.checkpoint:
        return Path(config.source.checkpoint)
    return paths.input("source_model")


def load_source(config: ExperimentConfig, paths: StagePaths) -> LoadedClassifier:
    """The source model, checked to predict the experiment's classes."""
    source = load_classifier(source_checkpoint(config, paths))
    if source.classes != list(config.classes):
        raise ConfigError(
            f"the source model's classes {source.classes} differ from the experiment's "
            f"classes {config.classes}"
        )
    return source


def make_optimizer(groups: Any, config: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when asked and momentum is set) or AdamW, over parameters or groups."""
    if config.name == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def configure_optimizer(
    module: L.LightningModule, params: Any, config: OptimizerConfig
) -> dict[str, Any]:
    """The configured optimiser with per-step linear warm-up then cosine decay to zero."""
    optimizer = make_optimizer(params, config)
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    epoch_steps = max(total // max(module.trainer.max_epochs or 1, 1), 1)
    warmup = epoch_steps * config.warmup_epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, config, epoch_steps)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def lr_factor(step: int, warmup: int, total: int, config: OptimizerConfig,
              epoch_steps: int) -> float:
    """Linear warm-up, then cosine to zero or `decay` per epoch."""
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "exponential":
        return config.decay ** ((step - warmup) // epoch_steps)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class ClassifierModule(L.LightningModule):
    """A classifier with the shared evaluation: accuracy, per class, confusion matrix."""

    def __init__(self, model: Classifier, classes: list[str], optimizer: OptimizerConfig) -> None:
        super().__init__()
        self.model = model
        self.classes = classes
        self.optimizer_config = optimizer
        self.test_metrics: dict[str, Any] = {}
        self._test_outputs: list[torch.Tensor] = []
        self._test_probs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizer(self, self.parameters(), self.optimizer_config)

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []
        self._test_probs = []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, labels, indices = batch
        probs = torch.softmax(self(images).float(), dim=1)
        self._test_outputs.append(torch.stack([probs.argmax(dim=1), labels, indices]))
        self._test_probs.append(probs)

    def on_test_epoch_end(self) -> None:
        """Metrics over the whole split evaluated (the test split, or the train split for
        `evaluate_train_split`), whichever rank scored which image: the label-free measures
        of `clup.validators` always, the classification metrics when every image has a
        label."""
        local = (torch.cat(self._test_outputs, dim=1) if self._test_outputs
                 else torch.zeros(3, 0, dtype=torch.long, device=self.device))
        local_probs = (torch.cat(self._test_probs) if self._test_probs
                       else torch.zeros(0, len(self.classes), device=self.device))
        predictions, labels, indices = gather_rows(self, local.T).T.cpu().numpy()
        probs = gather_rows(self, local_probs).cpu().numpy()
        # DDP's sampler pads the split with repeats so every rank gets as many images.
        _, first = np.unique(indices, return_index=True)
        predictions, labels, probs = predictions[first], labels[first], probs[first]
        if (labels != UNLABELLED).all():
            self.test_metrics = classification_metrics(predictions, labels, self.classes)
        else:
            self.test_metrics = {"accuracy": None, "count": int(len(labels))}
        measures = label_free_measures(probs) if len(probs) else {}
        self.test_metrics.update(measures)
        # The split the datamodule evaluates (`DomainDataModule.evaluating`) names the metrics.
        split = getattr(self.trainer.datamodule, "evaluated_split", "test")
        prefix = "test" if split == "test" else f"{split}_split"
        logged = {"accuracy": self.test_metrics["accuracy"], **measures}
        for name, value in logged.items():
            if value is not None:
                self.log(f"{prefix}/{name}", value, rank_zero_only=True)

    def log_train(self, loss: torch.Tensor, batch_size: int, **extra: float) -> None:
        """Training metrics, averaged over the ranks when several train."""
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        for name, value in extra.items():
            self.log(f"train/{name}", value, batch_size=batch_size, sync_dist=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"],
                 batch_size=batch_size)


def gather_rows(module: L.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated (each rank must hold as many); the rows alone when
    one process runs."""
    gathered = module.all_gather(rows)
    return gathered.flatten(0, 1) if module.trainer.world_size > 1 else gathered


def wandb_mode(config: WandbConfig) -> str:
    """`auto`: online only when this machine has W&B credentials, so demos need no account."""
    if config.mode != "auto":
        return config.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def make_loggers(config: ExperimentConfig, stage_dir: Path, stage: str) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=stage_dir, name=STAGE_FILES["csv_log"],
                                       version="")]
    mode = wandb_mode(config.wandb)
    if mode != "disabled":
        import wandb

        settings = ({} if config.wandb.console == "auto"
                    else {"settings": wandb.Settings(console=config.wandb.console)})
        loggers.append(
            WandbLogger(
                project=config.wandb.project,
                entity=config.wandb.entity,
                group=config.wandb.group or config.name,
                job_type=stage,
                name=f"{config.name}/{stage}",
                save_dir=str(stage_dir),
                mode=mode,
                config=config_to_dict(config),
                **settings,
            )
        )
    return loggers


class ResumeCheckpoint(Callback):
    """Saves the full training state after every epoch, atomically, for resuming.

    Lightning's ModelCheckpoint writes in place; a crash mid-write would leave a
    truncated `last.ckpt` that the rerun then fails to load.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        partial = self.path.with_suffix(".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    gpu = accelerator != "cpu" and torch.cuda.is_available()
    # Emulated bf16 (pre-Ampere GPUs) is slower than 32-bit: only native support counts.
    native = gpu and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if native else "32-true"


def make_trainer(
    config: ExperimentConfig,
    stage_dir: Path,
    stage: str,
    max_epochs: int = 1,
    steps_per_epoch: int = 50,
) -> L.Trainer:
    """A trainer logging to the stage folder, keeping `checkpoints/last.ckpt` for resuming.

    Several devices or nodes train with DDP (Lightning's choice for `strategy: auto`);
    under SLURM, Lightning reads the ranks from srun's environment.
    """
    runtime = config.runtime
    devices, num_nodes = device_layout(runtime)
    if isinstance(devices, int) and runtime.accelerator != "cpu" and torch.cuda.is_available():
        # A count is the most a stage uses: the driver may give a stage fewer GPUs.
        devices = min(devices, torch.cuda.device_count())
    return L.Trainer(
        accelerator=runtime.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=runtime.strategy,
        plugins=cluster_environment(),
        sync_batchnorm=runtime.sync_batchnorm,
        precision=resolve_precision(runtime.precision, runtime.accelerator),
        max_epochs=max_epochs,
        logger=make_loggers(config, stage_dir, stage),
        callbacks=[ResumeCheckpoint(stage_file(stage_dir, "resume")),
                   SpeedSettings(runtime), FollowThreadShare()],
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        default_root_dir=stage_dir,
        # ResumeCheckpoint keeps the one resume file; Lightning's own callback would leave
        # an `epoch=*.ckpt` beside every finished stage's artifacts.
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def fit_stage(
    config: ExperimentConfig,
    stage_dir: Path,
    stage: str,
    module: L.LightningModule,
    datamodule: DomainDataModule,
    epochs: int,
) -> L.Trainer:
    """Read the data, then fit, continuing from the latest checkpoint when one exists."""
    datamodule.prepare_data()
    datamodule.setup()
    trainer = make_trainer(config, stage_dir, stage, epochs, len(datamodule.train_dataloader()))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(stage_dir))
    # Under SLURM Lightning loads the newest requeue checkpoint into every later trainer
    # call (the test too): once fit is over, those hold stale weights.
    trainer.strategy.barrier("fit done")
    if trainer.is_global_zero:
        for hpc in stage_dir.glob(REQUEUE_CHECKPOINTS):
            hpc.unlink()
    trainer.strategy.barrier("requeue checkpoints removed")
    return trainer


def resume_checkpoint(stage_dir: Path) -> str | None:
    """The newest whole checkpoint among the epoch one and those Lightning saves when SLURM
    signals a job before its time limit (`hpc_ckpt_*.ckpt`, then requeued).

    A checkpoint is a zip archive whose index comes last: one cut off mid-write (the job
    killed while saving) is not a zip file and is passed over.
    """
    candidates = [p for p in [stage_file(stage_dir, "resume"),
                              *stage_dir.glob(REQUEUE_CHECKPOINTS)] if p.is_file()]
    found = [p for p in candidates if zipfile.is_zipfile(p)]
    chosen = str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    for cut in sorted(set(candidates) - set(found)):
        print(f"[clup] {cut} is cut off (the stage was stopped while saving it): it is "
              f"ignored, and the stage {'resumes from ' + chosen if chosen else 'starts over'}",
              flush=True)
    return chosen


def finish_loggers(trainer: L.Trainer) -> None:
    for logger in trainer.loggers:
        logger.finalize("success")
    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def remove_checkpoints(trainer: L.Trainer, stage_dir: Path) -> None:
    """Resume checkpoints are only useful until the stage's own artifact is written."""
    if trainer.is_global_zero:
        shutil.rmtree(stage_file(stage_dir, "checkpoint_dir"), ignore_errors=True)


def close_stage(trainer: L.Trainer, stage_dir: Path) -> None:
    """After a stage's artifacts are written: close its loggers, drop its resume
    checkpoints."""
    finish_loggers(trainer)
    remove_checkpoints(trainer, stage_dir)


def fit_and_evaluate(
    config: ExperimentConfig,
    paths: StagePaths,
    module: ClassifierModule,
    datamodule: DomainDataModule,
    epochs: int,
    backbone: BackboneConfig,
    *,
    train_split: bool = False,
) -> dict[str, Any]:
    """Train (resuming if interrupted), evaluate on the test split, save the classifier as
    the stage's `model` and the test metrics as its `metrics`; with `train_split` (an
    adapted model) these also hold `train_split`, its measures on the target train split
    (`evaluate_train_split`)."""
    trainer = fit_stage(config, paths.folder, paths.name, module, datamodule, epochs)
    metrics = evaluate_and_save(paths, trainer, module, datamodule, backbone,
                                train_split=train_split)
    close_stage(trainer, paths.folder)
    return metrics


def evaluate_and_save(paths: StagePaths, trainer: L.Trainer, module: ClassifierModule,
                      datamodule: DomainDataModule, backbone: BackboneConfig, *,
                      train_split: bool = False, extra: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """The end of a stage that trains a classifier: evaluate it on the test split (and with
    `train_split` on the train split, `evaluate_train_split`), add `extra`, and on rank 0
    save it as the stage's `model` and the metrics as its `metrics`."""
    metrics = evaluate(trainer, module, datamodule)
    if train_split:
        metrics["train_split"] = evaluate_train_split(trainer, module, datamodule)
    metrics.update(extra or {})
    if trainer.is_global_zero:
        save_classifier(
            paths.output("model"), module.model, module.classes, backbone,
            datamodule.preprocessing, metadata={"test": metrics, "stage": paths.name},
        )
        write_json(paths.output("metrics"), metrics)
    return metrics


def evaluate(trainer: L.Trainer, module: ClassifierModule, datamodule: DomainDataModule
             ) -> dict[str, Any]:
    """Test-split metrics, or a note saying why there are none."""
    table = datamodule.test_table
    if not len(table):
        return {"accuracy": None, "note": "no labels to evaluate: the test split is empty"}
    if not table.has_labels:
        return {"accuracy": None,
                "note": "no labels to evaluate: some test images have no label"}
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.test_metrics


def evaluate_train_split(trainer: L.Trainer, module: ClassifierModule,
                         datamodule: DomainDataModule) -> dict[str, Any]:
    """The model on the target train split with evaluation transforms: the label-free
    measures of `clup.validators`, and its accuracy where the split has labels (a
    diagnostic of this project's benchmarks, which know them; a user's target may not)."""
    with datamodule.evaluating("train"):
        trainer.test(module, datamodule=datamodule, verbose=False)
    return {key: module.test_metrics.get(key) for key in ("accuracy", "count", *VALIDATORS)}
