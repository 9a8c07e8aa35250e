"""Stage bookkeeping: what each stage depends on, whether it is done, running one.

A stage is done when `<stage>/done.json` holds the fingerprint of the settings it
depends on (and of the stages upstream of it). Changing an unrelated setting
(threads, W&B) keeps finished stages; changing a relevant one reruns that stage
and everything downstream. A stage started under a different fingerprint has
its folder cleared first, so it never resumes from a stale checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from clup.config import SFDA_METHODS, ExperimentConfig, config_to_dict
from clup.distributed import is_rank_zero, launch_id
from clup.errors import ConfigError
from clup.io import file_lock, read_json, write_json
from clup.threads import sharing_threads

LOG_NAME = "stage.log"
RANK_POLL_S = 1.0


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    upstream: tuple[str, ...]
    settings: Callable[[ExperimentConfig], dict[str, Any]]
    entry: str

    def run(self, config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
        # Imported on use: the driver process never needs the training stack of every stage.
        module_name, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(module_name), function)(config, run_dir)


def _source_settings(c: ExperimentConfig) -> dict[str, Any]:
    pretrained = c.source.pretrained
    return {"classes": c.classes, "seed": c.seed, "source": config_to_dict(c.source),
            "pretrained": _file_digest(Path(pretrained)) if pretrained else None}


def _stage1_settings(c: ExperimentConfig) -> dict[str, Any]:
    checkpoint = c.source.checkpoint
    return {
        "classes": c.classes, "seed": c.seed, "target": config_to_dict(c.target),
        "cluster_labeler": config_to_dict(c.cluster_labeler),
        "source_checkpoint": _file_digest(Path(checkpoint)) if checkpoint else None,
    }


def _stage2_settings(c: ExperimentConfig) -> dict[str, Any]:
    return {
        "classes": c.classes, "seed": c.seed, "target": config_to_dict(c.target),
        "backbone": config_to_dict(c.backbone), "preprocessing": config_to_dict(c.preprocessing),
        "swav": config_to_dict(c.swav),
    }


def _stage3_settings(c: ExperimentConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {"finetune": config_to_dict(c.finetune), "seed": c.seed}
    if c.finetune.init == "scratch":
        settings.update(backbone=config_to_dict(c.backbone),
                        preprocessing=config_to_dict(c.preprocessing))
    return settings


def _adapt_settings(c: ExperimentConfig) -> dict[str, Any]:
    checkpoint = c.source.checkpoint
    return {"classes": c.classes, "seed": c.seed, "target": config_to_dict(c.target),
            "method": c.method, "sfda": config_to_dict(c.sfda),
            "source_checkpoint": _file_digest(Path(checkpoint)) if checkpoint else None}


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("source", "source model", (), _source_settings,
              "clup.stages.source_classifier:run"),
        Stage("stage1", "stage 1, ClusterLabeler", ("source",), _stage1_settings,
              "clup.stages.cluster_labeler:run"),
        Stage("stage2", "stage 2, SwAVPretrainer", (), _stage2_settings,
              "clup.stages.swav_pretrainer:run"),
        Stage("stage3", "stage 3, PseudoLabelFinetuner", ("stage1", "stage2"),
              _stage3_settings, "clup.stages.pseudo_label_finetuner:run"),
        Stage("adapt", "source-free baseline", ("source",), _adapt_settings,
              "clup.stages.sfda_adapter:run"),
    )
}
CONCURRENT = ("stage1", "stage2", "adapt")
"""Stages that need only the source model: they run at the same time."""


def active_upstream(config: ExperimentConfig, stage: Stage) -> tuple[str, ...]:
    """Upstream stages that this experiment runs."""
    active = active_stages(config)
    return tuple(u for u in stage.upstream if u in active)


def fingerprint(config: ExperimentConfig, name: str) -> str:
    stage = STAGES[name]
    payload = {
        "settings": stage.settings(config),
        "upstream": {u: fingerprint(config, u) for u in active_upstream(config, stage)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


SHARED_RUN_KEYS = {"source": "source.run_name", "stage1": "cluster_labeler.run_name",
                   "stage2": "swav.run_name"}
"""Stages whose folder experiments may share: the source model, stage 1 (the methods of a
benchmark that agree on its settings), and SwAV (it depends on the target only, so the
setups with one target share it, as the reference release did)."""


def shared_run(config: ExperimentConfig, name: str) -> str | None:
    """The shared run folder a stage lives in, if the experiment names one."""
    if name == "source":
        return config.source.run_name
    if name == "stage1":
        return config.cluster_labeler.run_name
    if name == "stage2":
        return config.swav.run_name
    return None


def stage_dir(config: ExperimentConfig, run_dir: Path, name: str) -> Path:
    """A stage's folder: in the experiment's run folder, or in a shared one."""
    shared = shared_run(config, name)
    return Path(config.output_root) / shared / name if shared else run_dir / name


def check_shared_stages(config: ExperimentConfig, run_dir: Path) -> None:
    """A shared stage made under other settings is never overwritten: other experiments
    rely on it. Stop, saying how to keep both."""
    for name, key in SHARED_RUN_KEYS.items():
        shared = shared_run(config, name)
        if shared is None or name not in active_stages(config):
            continue
        folder = stage_dir(config, run_dir, name)
        started = folder / "started.json"
        if started.is_file() and read_json(started).get("fingerprint") != fingerprint(config, name):
            raise ConfigError(
                f"{folder} holds a {STAGES[name].title} made under other settings, shared by "
                f"the experiments with {key}: {shared}; it is kept. Name another folder for "
                f"these settings ({key}={shared}-2, say) or remove that one"
            )


def active_stages(config: ExperimentConfig) -> list[str]:
    """The stages this experiment runs: no source stage when a source checkpoint is given;
    stage 1 always (it also measures the source model on the target); SwAV and stage 3 for
    CluP (no SwAV when stage 3 starts from another backbone); `adapt` for a baseline."""
    clup = config.method == "clup"
    skipped = {"source": config.source.checkpoint is not None,
               "stage2": not clup or config.finetune.init != "swav",
               "stage3": not clup,
               "adapt": config.method not in SFDA_METHODS}
    return [n for n in STAGES if not skipped.get(n, False)]


def done_record(config: ExperimentConfig, run_dir: Path, name: str) -> dict[str, Any] | None:
    """The stage's completion record if it finished under the current settings."""
    path = stage_dir(config, run_dir, name) / "done.json"
    if not path.is_file():
        return None
    record = read_json(path)
    return record if record.get("fingerprint") == fingerprint(config, name) else None


def run_stage(config: ExperimentConfig, run_dir: Path, name: str) -> dict[str, Any]:
    """Run one stage in this process, unless it is already done; record its completion.

    The stage folder is locked while the stage runs, so two experiments sharing a
    source model train it once: the second waits, then finds it done.
    """
    stage = STAGES[name]
    for upstream in active_upstream(config, stage):
        if done_record(config, run_dir, upstream) is None:
            raise RuntimeError(f"{stage.title} needs {STAGES[upstream].title} to finish first")
    if not is_rank_zero():
        return _run_other_rank(config, run_dir, name)
    folder = stage_dir(config, run_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    waiting = (f"[clup] {stage.title}: another clup process is running it in {folder}; "
               "waiting for it")
    with file_lock(folder / ".lock", waiting):
        record = done_record(config, run_dir, name)
        if record is not None:
            return record
        check_shared_stages(config, run_dir)
        current = fingerprint(config, name)
        started = folder / "started.json"
        if started.is_file() and read_json(started).get("fingerprint") != current:
            _clear_stage_folder(folder)
        write_json(started, {"fingerprint": current, "launch": launch_id()})
        begin = time.perf_counter()
        L.seed_everything(config.seed, workers=True, verbose=False)
        with sharing_threads():
            result = stage.run(config, run_dir)
        record = {"fingerprint": current, "seconds": round(time.perf_counter() - begin, 2),
                  "result": result}
        write_json(folder / "done.json", record)
    return record


def _run_other_rank(config: ExperimentConfig, run_dir: Path, name: str) -> dict[str, Any]:
    """Rank > 0 of a multi-process stage: train beside rank 0, keep no books.

    Under srun every rank starts at once, so wait until this launch's rank 0 has claimed
    the stage folder for these settings (clearing a stale one first; another job sharing
    the folder may hold it meanwhile), or the stage is done.
    """
    started = stage_dir(config, run_dir, name) / "started.json"
    claim = {"fingerprint": fingerprint(config, name), "launch": launch_id()}
    while True:
        record = done_record(config, run_dir, name)
        if record is not None:
            return record
        if started.is_file() and read_json(started) == claim:
            break
        time.sleep(RANK_POLL_S)
    L.seed_everything(config.seed, workers=True, verbose=False)
    with sharing_threads():
        return {"fingerprint": claim["fingerprint"], "result": STAGES[name].run(config, run_dir)}


def _clear_stage_folder(stage_dir: Path) -> None:
    """Remove a stale stage's outputs; its log stays, since the driver is writing to it."""
    for child in stage_dir.iterdir():
        if child.name in (LOG_NAME, ".lock"):
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _file_digest(path: Path) -> str:
    if not path.is_file():
        return f"missing:{path}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
