"""Stage bookkeeping: what each stage depends on, whether it is done, running one.

A stage is done when `<stage>/done.json` holds the fingerprint of the settings it
depends on (and of the stages upstream of it). Changing an unrelated setting
(threads, W&B) keeps finished stages; changing a relevant one reruns that stage
and everything downstream. A stage started under a different fingerprint has
its folder cleared first, so it never resumes from a stale checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from clup.config import ExperimentConfig, config_to_dict
from clup.io import read_json, write_json

LOG_NAME = "stage.log"


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
    return {"classes": c.classes, "seed": c.seed, "source": config_to_dict(c.source)}


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
    return {"finetune": config_to_dict(c.finetune), "seed": c.seed}


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
    )
}


def active_upstream(config: ExperimentConfig, stage: Stage) -> tuple[str, ...]:
    """Upstream stages that this experiment runs (no source stage when one is given)."""
    return tuple(u for u in stage.upstream if u != "source" or config.source.checkpoint is None)


def fingerprint(config: ExperimentConfig, name: str) -> str:
    stage = STAGES[name]
    payload = {
        "settings": stage.settings(config),
        "upstream": {u: fingerprint(config, u) for u in active_upstream(config, stage)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def stage_dir(config: ExperimentConfig, run_dir: Path, name: str) -> Path:
    """A stage's folder; the source model may live in a run folder shared by experiments."""
    if name == "source" and config.source.run_name:
        return Path(config.output_root) / config.source.run_name / "source"
    return run_dir / name


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
    folder = stage_dir(config, run_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock", stage.title):
        record = done_record(config, run_dir, name)
        if record is not None:
            return record
        current = fingerprint(config, name)
        started = folder / "started.json"
        if started.is_file() and read_json(started).get("fingerprint") != current:
            _clear_stage_folder(folder)
        write_json(started, {"fingerprint": current})
        begin = time.perf_counter()
        L.seed_everything(config.seed, workers=True, verbose=False)
        result = stage.run(config, run_dir)
        record = {"fingerprint": current, "seconds": round(time.perf_counter() - begin, 2),
                  "result": result}
        write_json(folder / "done.json", record)
    return record


@contextmanager
def _locked(path: Path, title: str) -> Iterator[None]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[clup] {title}: another clup process is running it in {path.parent}; "
                  "waiting for it", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
