"""What a run needs and what it will do: the checks made before anything trains.

`check_inputs` runs at the start of every `clup run` so that a missing dataset, or a
missing or mismatching checkpoint, stops it at once, not after hours of source training.
`describe_plan` is `clup run --dry-run`: it also reads every input (list files, manifests,
a few images, checkpoints) and prints stages, devices and the output folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from clup.config import SFDA_METHODS, DatasetConfig, ExperimentConfig
from clup.data.datamodule import load_image
from clup.data.datasets import check_exists, survey_dataset
from clup.errors import CheckpointError, ConfigError
from clup.presets import resolve_sfda, settings_of
from clup.registry import SOURCE, STAGES, RunLayout
from clup.threads import POOL_VARIABLE, THREADS_VARIABLE


def datasets_used(config: ExperimentConfig) -> list[tuple[str, DatasetConfig]]:
    """(key, dataset) of every dataset the run reads: the target, and the source data
    unless a source model is given or already trained (perhaps by another experiment)."""
    from clup.pipeline import done_record

    used = [("target", config.require_target())]
    source = config.source
    if source.checkpoint is None and source.data is not None \
            and done_record(config, config.run_dir, SOURCE) is None:
        used.append(("source.data", source.data))
    return used


def check_inputs(config: ExperimentConfig) -> None:
    """Stop at once when a dataset, checkpoint or weights file the run needs is missing,
    when the source checkpoint does not fit the experiment, or when the run would have to
    overwrite a stage shared with other experiments."""
    from clup.pipeline import check_shared_stages

    check_shared_stages(config, config.run_dir)
    for key, dataset in datasets_used(config):
        check_exists(dataset, key)
    source = config.source
    if source.checkpoint is not None:
        check_source_checkpoint(source.checkpoint, config.classes)
    elif source.pretrained and not Path(source.pretrained).is_file():
        raise CheckpointError(f"source.pretrained {source.pretrained} does not exist")


def check_source_checkpoint(checkpoint: str, classes: list[str]) -> str:
    """Read `source.checkpoint` (never running code from it) and check that it is a clup
    classifier whose weights fit its own settings and which predicts the experiment's
    `classes`; return its backbone's name. Late import: torch only for a run naming one."""
    from clup.models.checkpoint import load_classifier

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"source.checkpoint {checkpoint} does not exist")
    loaded = load_classifier(checkpoint)
    if loaded.classes != list(classes):
        raise CheckpointError(f"source.checkpoint {checkpoint} has the classes "
                              f"{loaded.classes}, the experiment {classes}")
    return loaded.backbone.name


def check_cluster_count(config: ExperimentConfig, train_images: int) -> None:
    """K-means needs at least K target train images; say so before anything trains."""
    k = config.cluster_labeler.num_clusters
    if train_images < k:
        raise ConfigError(
            f"cluster_labeler.num_clusters is {k}, but the target has only {train_images} "
            f"train images: lower it (cluster_labeler.num_clusters=...)"
        )


def describe_plan(config: ExperimentConfig, gpus: list[str], cpu_threads: int) -> str:
    """Read every input and say what `clup run` would do, without training."""
    from clup.devices import plan_devices
    from clup.pipeline import active_stages, done_record, running_alone

    check_inputs(config)
    lines = [f"Experiment {config.name}: configuration valid",
             f"  output folder  {config.run_dir}", "  data"]
    for key, dataset in datasets_used(config):
        lines += [f"    {key:<12} {line}" for line in _describe_data(dataset, key, config)]
    if config.method in SFDA_METHODS:
        lines.append(f"  {config.method} settings  {_describe_sfda(config)}")
    lines += [f"  source model   {_describe_source(config)}", "  stages"]
    layout = RunLayout(config, config.run_dir)
    alone = running_alone(config)
    env = plan_devices(gpus, cpu_threads, config.runtime.stage1_gpus,
                       layout.file("threads"), alone)
    for name in active_stages(config):
        state = ("done, reused" if done_record(config, config.run_dir, name) is not None
                 else "will run")
        where = layout.stage_dir(name)
        lines.append(f"    {STAGES[name].title:<31} {state:<13} {_devices(env[name])}  {where}")
    if alone:
        lines.append("  (stage 1 clusters SwAV's features: it runs after stage 2"
                     + (", SwAV beside the source model)" if not gpus else ")"))
    else:
        lines.append("  (stage 1 and stage 2 run at the same time" + (
            "; SwAV also beside the source model; the stages running share the CPU threads)"
            if not gpus else ")"))
    lines.append("Dry run: nothing was trained.")
    return "\n".join(lines)


def _describe_data(dataset: DatasetConfig, key: str, config: ExperimentConfig) -> list[str]:
    survey = survey_dataset(dataset, config.classes, key)
    if key == "target":
        check_cluster_count(config, survey.train_images)
        resolve_sfda(config, survey.train_images)
    for path in survey.samples:
        load_image(path)
    return [survey.where, f"  {survey.contents}"]


def _describe_sfda(config: ExperimentConfig) -> str:
    """The preset the run takes its method's settings from, and those settings."""
    sfda = config.sfda
    values = ", ".join(f"{name} {getattr(sfda, name)}"
                       for name in settings_of(config.method))
    return f"preset {sfda.preset}: {values}"


def _describe_source(config: ExperimentConfig) -> str:
    from clup.models.backbones import build_backbone
    from clup.models.checkpoint import load_pretrained

    source = config.source
    if source.checkpoint is not None:
        backbone = check_source_checkpoint(source.checkpoint, config.classes)
        return f"checkpoint {source.checkpoint} ({backbone}, classes match)"
    start = "from scratch"
    if source.pretrained:
        load_pretrained(build_backbone(source.backbone), source.pretrained,
                        source.pretrained_prefix)
        start = f"from {source.pretrained} (weights fit the backbone)"
    return f"trained ({source.backbone.name}, {start}, {source.epochs} epochs)"


def _devices(env: dict[str, str]) -> str:
    gpus = env.get("CUDA_VISIBLE_DEVICES", "")
    if gpus:
        return f"GPUs {gpus}"
    threads = env.get(THREADS_VARIABLE, os.cpu_count())
    return f"CPU threads: {threads}" + (", shared" if POOL_VARIABLE in env else "")
