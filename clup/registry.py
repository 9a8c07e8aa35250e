"""The stages, each declared once, and where a run keeps every file.

A `Stage` is the single source of what the rest of clup knows of a stage: its name (also
its folder's) and title, the config section it reads, the stages upstream of it, its
share of the GPUs (which makes it concurrent), the config key that lets experiments share
its folder, the files it writes (`outputs`) and reads from other stages (`inputs`), and
its entry point. The CLI's choices, the device plan, SLURM's per-stage resources,
fingerprints and result collection are derived from `STAGES`.

`RunLayout` resolves every path of a run; `StagePaths` is one stage's view of it, which is
what a stage's `run(config, paths)` receives: it writes `paths.output(...)` and reads
`paths.input(...)`, and never spells a folder or file name. No module outside this one
does.

Adding a stage: one module with `run(config: ExperimentConfig, paths: StagePaths) -> dict`
and one entry in `STAGES` (its settings function decides when it reruns), plus, if it is
optional, a line in `pipeline.active_stages`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict as config_to_dict
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clup.io import file_sha256

if TYPE_CHECKING:  # the schema checks `slurm.stages` against STAGES, so imports this module
    from clup.config import ExperimentConfig

SOURCE, STAGE1, STAGE2, STAGE3, ADAPT = "source", "stage1", "stage2", "stage3", "adapt"
"""The stages' names, which are also their folders' names."""

STAGE_FILES = {
    "done": "done.json",        # the completion record: fingerprint, seconds, result
    "started": "started.json",  # the fingerprint it started under, the launch, the time
    "log": "stage.log",         # its output, when it does not print to the terminal
    "lock": ".lock",            # held while it runs
    "checkpoint_dir": "checkpoints",
    "resume": "checkpoints/last.ckpt",  # the full training state after the last epoch
    "csv_log": "csv",           # Lightning's CSV log (W&B writes its own `wandb` folder)
}
"""Files every stage folder holds."""
REQUEUE_CHECKPOINTS = "hpc_ckpt_*.ckpt"
"""What Lightning saves when SLURM signals a job before its time limit."""
KEPT_ON_RESTART = ("log", "lock")
"""Kept when a stage's folder is cleared for new settings: the driver is writing its log."""

RUN_FILES = {
    "config": "config.yaml",    # the resolved settings every stage process reads
    "results": "results.json",  # collected by `clup.results` once the stages are done
    "threads": ".threads",      # the CPU thread pool of the stages running at once
    "jobs": "jobs.json",        # the SLURM jobs of the last submission
    "owner": ".owner.lock",     # held by the run using the folder (clup/run_folder.py)
}
"""Files of a run folder itself."""

GRID_FILES = {"rows": "benchmark.csv", "table": "benchmark.md"}
"""Files of a benchmark grid's folder (`clup benchmark`): one row per run, the table."""


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    section: str
    """The config section of its own settings (`finetune` for stage 3, `sfda` for adapt)."""
    upstream: tuple[str, ...]
    settings: Callable[[ExperimentConfig], dict[str, Any]]
    """What it depends on besides its upstream stages: its fingerprint's payload."""
    entry: str
    outputs: Mapping[str, str]
    """Artifact name -> path in its folder."""
    inputs: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """What it reads from other stages: name -> (stage, that stage's artifact)."""
    gpus: Literal["all", "first", "rest"] = "all"
    """Its GPUs: all of them, or, running at the same time as the other stages that need
    only the source model, stage 1's first `runtime.stage1_gpus` (`first`) or the others
    (`rest`)."""
    shared_run: str | None = None
    """The config key that names a folder experiments may share for this stage."""
    adapted_model: bool = False
    """Whether its `model`/`metrics` are an experiment's adapted model."""
    data: tuple[str, ...] = ()
    """The config keys of the datasets it reads: its fingerprint covers what they hold
    (clup/data/fingerprint.py), not only their settings."""
    extra_upstream: Callable[[ExperimentConfig], tuple[str, ...]] = lambda config: ()
    """Stages upstream of it under some settings only (stage 1 clustering SwAV's features
    waits for stage 2): a changed stage order, which the driver, fingerprints and the
    checks read through `pipeline.active_upstream`."""

    @property
    def concurrent(self) -> bool:
        """Needs only the source model, and runs beside the other such stages."""
        return self.gpus != "all"

    def run(self, config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
        # Imported on use: the driver process never needs the training stack of every stage.
        module_name, _, function = self.entry.partition(":")
        entry = getattr(importlib.import_module(module_name), function)
        return entry(config, RunLayout(config, run_dir).paths(self.name))


def _source_settings(c: ExperimentConfig) -> dict[str, Any]:
    pretrained = c.source.pretrained
    return {"classes": c.classes, "seed": c.seed, "source": config_to_dict(c.source),
            "pretrained": _file_digest(Path(pretrained)) if pretrained else None}


LATER_SWITCHES = {"cluster_labeler": {"features": "source_model"}}
"""Settings added after runs were made, with the value that reproduces those runs: left out
of a fingerprint at that value, so finished runs stay finished when a switch is added."""


def _section(c: ExperimentConfig, name: str) -> dict[str, Any]:
    """A config section's settings for a fingerprint, less the `LATER_SWITCHES` left at the
    value runs had before the switch existed."""
    values = config_to_dict(getattr(c, name))
    for key, before in LATER_SWITCHES.get(name, {}).items():
        if values.get(key) == before:
            del values[key]
    return values


def _stage1_settings(c: ExperimentConfig) -> dict[str, Any]:
    checkpoint = c.source.checkpoint
    return {
        "classes": c.classes, "seed": c.seed, "target": config_to_dict(c.target),
        "cluster_labeler": _section(c, "cluster_labeler"),
        "source_checkpoint": _file_digest(Path(checkpoint)) if checkpoint else None,
    }


def _stage1_upstream(c: ExperimentConfig) -> tuple[str, ...]:
    return (STAGE2,) if c.cluster_labeler.features == "swav" else ()


def _stage2_settings(c: ExperimentConfig) -> dict[str, Any]:
    return {
        "classes": c.classes, "seed": c.seed, "target": config_to_dict(c.target),
        "backbone": config_to_dict(c.backbone), "preprocessing": config_to_dict(c.preprocessing),
        "swav": config_to_dict(c.swav),
    }


SELF_TRAINING_KEYS = ("rounds", "final_selection_ratio")
"""The `finetune` keys of stage 3's self-training rounds."""


def _stage3_settings(c: ExperimentConfig) -> dict[str, Any]:
    finetune = config_to_dict(c.finetune)
    settings: dict[str, Any] = {"finetune": finetune, "seed": c.seed}
    if c.finetune.rounds == 1:
        # Not read in one round: runs made before rounds existed keep their fingerprints.
        for key in SELF_TRAINING_KEYS:
            del finetune[key]
    else:
        # Every later round reclusters with stage 1's settings.
        settings["cluster_labeler"] = config_to_dict(c.cluster_labeler)
    if c.finetune.init == "scratch":
        settings.update(backbone=config_to_dict(c.backbone),
                        preprocessing=config_to_dict(c.preprocessing))
    return settings


def _adapt_settings(c: ExperimentConfig) -> dict[str, Any]:
    checkpoint = c.source.checkpoint
    return {"classes": c.classes, "seed": c.seed, "target": config_to_dict(c.target),
            "method": c.method, "sfda": config_to_dict(c.sfda),
            "source_checkpoint": _file_digest(Path(checkpoint)) if checkpoint else None}


def _file_digest(path: Path) -> str:
    return file_sha256(path) if path.is_file() else f"missing:{path}"


MODEL = {"model": "model.ckpt", "metrics": "metrics.json"}
SOURCE_MODEL = {"source_model": (SOURCE, "model")}

ROUND_FOLDER = "round{number}"
"""A self-training round's folder in stage 3's (`finetune.rounds` > 1: rounds 1 to N)."""
ROUND_FILES = {
    "model": MODEL["model"],               # the round's classifier, once it is trained
    "pseudo_labels": "pseudo_labels.csv",  # what rounds 2 to N train on, in stage 1's format
    "summary": "summary.json",             # that table's account, as stage 1's
    "feature_cache": "features",           # the round's predict pass, until its table exists
}
"""Files of a round's folder, besides the `STAGE_FILES` of its training (its resume
checkpoint, its log)."""

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(SOURCE, "source model", "source", (), _source_settings,
              "clup.stages.source_classifier:run", MODEL, shared_run="source.run_name",
              data=("source.data",)),
        Stage(STAGE1, "stage 1, ClusterLabeler", "cluster_labeler", (SOURCE,),
              _stage1_settings, "clup.stages.cluster_labeler:run",
              {"pseudo_labels": "pseudo_labels.csv", "summary": "summary.json",
               "source_on_target": "source_on_target.json", "plot": "pseudo_labels.png",
               "feature_cache": "features", "swav_feature_cache": "swav_features"},
              {**SOURCE_MODEL, "backbone": (STAGE2, "backbone")}, gpus="first",
              shared_run="cluster_labeler.run_name", data=("target",),
              extra_upstream=_stage1_upstream),
        Stage(STAGE2, "stage 2, SwAVPretrainer", "swav", (), _stage2_settings,
              "clup.stages.swav_pretrainer:run",
              {"backbone": "backbone.ckpt", "metrics": "metrics.json"},
              gpus="rest", shared_run="swav.run_name", data=("target",)),
        Stage(STAGE3, "stage 3, PseudoLabelFinetuner", "finetune", (STAGE1, STAGE2),
              _stage3_settings, "clup.stages.pseudo_label_finetuner:run", MODEL,
              {"pseudo_labels": (STAGE1, "pseudo_labels"), "backbone": (STAGE2, "backbone"),
               **SOURCE_MODEL},
              adapted_model=True, data=("target",)),
        Stage(ADAPT, "source-free baseline", "sfda", (SOURCE,), _adapt_settings,
              "clup.stages.sfda_adapter:run", MODEL, SOURCE_MODEL, gpus="rest",
              adapted_model=True, data=("target",)),
    )
}
CONCURRENT = tuple(name for name, stage in STAGES.items() if stage.concurrent)
"""Stages that need only the source model: they run at the same time."""


@dataclass(frozen=True)
class RunLayout:
    """Every path of one experiment's run."""

    config: ExperimentConfig
    run_dir: Path

    def file(self, name: str) -> Path:
        """A file of the run folder itself (`RUN_FILES`)."""
        return self.run_dir / RUN_FILES[name]

    def shared_run(self, name: str) -> str | None:
        """The shared run folder a stage lives in, if the experiment names one."""
        key = STAGES[name].shared_run
        return None if key is None else setting(self.config, key)

    def stage_dir(self, name: str) -> Path:
        """A stage's folder: in the experiment's run folder, or in a shared one."""
        shared = self.shared_run(name)
        return Path(self.config.output_root) / shared / name if shared else self.run_dir / name

    def artifact(self, name: str, artifact: str) -> Path:
        """A file of a stage's folder: one it declares in `outputs`, or one of
        `STAGE_FILES`."""
        return stage_file(self.stage_dir(name), artifact, STAGES[name])

    def paths(self, name: str) -> StagePaths:
        return StagePaths(self, STAGES[name])


@dataclass(frozen=True)
class StagePaths:
    """One stage's files: what a stage's `run` receives."""

    layout: RunLayout
    stage: Stage

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def folder(self) -> Path:
        return self.layout.stage_dir(self.stage.name)

    def output(self, artifact: str) -> Path:
        return self.layout.artifact(self.stage.name, artifact)

    def input(self, name: str) -> Path:
        """A declared input: the other stage's artifact."""
        if name not in self.stage.inputs:
            raise KeyError(f"{self.stage.title} declares no input {name!r}; it has "
                           f"{sorted(self.stage.inputs)}")
        stage, artifact = self.stage.inputs[name]
        return self.layout.artifact(stage, artifact)


def stage_file(folder: Path, artifact: str, stage: Stage | None = None) -> Path:
    """A file in a stage folder `folder`: `stage`'s declared output, or one of
    `STAGE_FILES`, which every stage has."""
    relative = (stage.outputs.get(artifact) if stage is not None else None) \
        or STAGE_FILES.get(artifact)
    if relative is None:
        owner = f"{stage.title} declares" if stage is not None else "stage folders have"
        known = sorted({*STAGE_FILES, *(stage.outputs if stage is not None else {})})
        raise KeyError(f"{owner} no file {artifact!r}; known: {known}")
    return folder / relative


def round_folder(stage_dir: Path, number: int) -> Path:
    """Self-training round `number`'s folder in the stage folder `stage_dir`."""
    return stage_dir / ROUND_FOLDER.format(number=number)


def round_file(stage_dir: Path, number: int, artifact: str) -> Path:
    """A file of round `number`'s folder (`ROUND_FILES`) in the stage folder `stage_dir`."""
    if artifact not in ROUND_FILES:
        raise KeyError(f"a round's folder has no file {artifact!r}; known: {sorted(ROUND_FILES)}")
    return round_folder(stage_dir, number) / ROUND_FILES[artifact]


def setting(config: ExperimentConfig, key: str) -> Any:
    """The value of a dotted config key (`source.run_name`)."""
    return reduce(getattr, key.split("."), config)


def stage_dir(config: ExperimentConfig, run_dir: Path, name: str) -> Path:
    """`RunLayout(config, run_dir).stage_dir(name)`."""
    return RunLayout(config, run_dir).stage_dir(name)
