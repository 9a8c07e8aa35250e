"""Stage bookkeeping: what each stage depends on, whether it is done, running one.

A stage is done when `<stage>/done.json` holds the fingerprint of the settings it
depends on (and of the stages upstream of it). Changing an unrelated setting
(threads, W&B) keeps finished stages; changing a relevant one reruns that stage
and everything downstream. A stage started under a different fingerprint has
its folder cleared first, so it never resumes from a stale checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from clup.config import SFDA_METHODS, ExperimentConfig
from clup.data.datasets import prepare_dataset
from clup.data.fingerprint import data_digest, forget_data_digests
from clup.distributed import is_rank_zero, launch_id
from clup.errors import ConfigError, StageFailed
from clup.io import file_lock, read_json, write_json
from clup.registry import (
    ADAPT,
    CONCURRENT,
    KEPT_ON_RESTART,
    SOURCE,
    STAGE2,
    STAGE3,
    STAGE_FILES,
    STAGES,
    RunLayout,
    Stage,
    setting,
)
from clup.threads import sharing_threads

RANK_POLL_S = 1.0


def active_upstream(config: ExperimentConfig, stage: Stage) -> tuple[str, ...]:
    """Upstream stages that this experiment runs, those its settings add included."""
    active = active_stages(config)
    return tuple(u for u in (*stage.upstream, *stage.extra_upstream(config)) if u in active)


def running_alone(config: ExperimentConfig) -> list[str]:
    """The concurrent stages that this experiment's settings order one after another (one
    waits for the other: stage 1 clustering SwAV's features): each gets every GPU."""
    active = [n for n in active_stages(config) if n in CONCURRENT]
    waits = {n: set(active_upstream(config, STAGES[n])) & set(active) for n in active}
    return [n for n in active if waits[n] or any(n in w for w in waits.values())]


def fingerprint(config: ExperimentConfig, name: str, *, data: bool = True) -> str:
    """What a stage's result depends on: its settings, what its datasets hold (unless
    `data` is false: the settings alone, known before any dataset is made), and the
    fingerprints of its upstream stages."""
    stage = STAGES[name]
    payload: dict[str, Any] = {
        "settings": stage.settings(config),
        "upstream": {u: fingerprint(config, u, data=data)
                     for u in active_upstream(config, stage)},
    }
    if data:
        payload["data"] = {key: data_digest(setting(config, key), config.classes)
                           for key in stage.data}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_shared_stages(config: ExperimentConfig, run_dir: Path) -> None:
    """A shared stage made under other settings is never overwritten: other experiments
    rely on it. Stop, saying how to keep both."""
    layout = RunLayout(config, run_dir)
    for name, stage in STAGES.items():
        shared = layout.shared_run(name)
        if shared is None or name not in active_stages(config):
            continue
        key = stage.shared_run
        folder = layout.stage_dir(name)
        started = layout.artifact(name, "started")
        if started.is_file() and read_json(started).get("fingerprint") != fingerprint(config, name):
            raise ConfigError(
                f"{folder} holds a {STAGES[name].title} made under other settings, shared by "
                f"the experiments with {key}: {shared}; it is kept. Name another folder for "
                f"these settings ({key}={shared}-2, say) or remove that one"
            )


def active_stages(config: ExperimentConfig) -> list[str]:
    """The stages this experiment runs: no source stage when a source checkpoint is given;
    stage 1 always (it also measures the source model on the target); SwAV and stage 3 for
    CluP (no SwAV when neither stage 3 starts from it nor stage 1 clusters its features);
    `adapt` for a baseline."""
    clup = config.runs_clup
    swav_used = config.finetune.init == "swav" or config.cluster_labeler.features == "swav"
    skipped = {SOURCE: config.source.checkpoint is not None,
               STAGE2: not clup or not swav_used,
               STAGE3: not clup,
               ADAPT: config.method not in SFDA_METHODS}
    return [n for n in STAGES if not skipped.get(n, False)]


def done_record(config: ExperimentConfig, run_dir: Path, name: str) -> dict[str, Any] | None:
    """The stage's completion record if it finished under the current settings."""
    path = RunLayout(config, run_dir).artifact(name, "done")
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
            raise StageFailed(
                f"{stage.title} needs {STAGES[upstream].title} to finish first, under these "
                f"settings: run the experiment (clup run), or that stage (clup stage "
                f"{upstream} {run_dir})")
    if not is_rank_zero():
        return _run_other_rank(config, run_dir, name)
    layout = RunLayout(config, run_dir)
    folder = layout.stage_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    waiting = (f"[clup] {stage.title}: another clup process is running it in {folder}; "
               "waiting for it")
    with file_lock(layout.artifact(name, "lock"), waiting):
        record = done_record(config, run_dir, name)
        if record is not None:
            return record
        check_shared_stages(config, run_dir)
        # Its fingerprint covers what its datasets hold: make them readable first (`clup run`
        # has; a stage run alone may be the first to read them).
        for key in stage.data:
            if setting(config, key) is not None:
                prepare_dataset(setting(config, key), key, progress=False)
        forget_data_digests()
        current = fingerprint(config, name)
        started = layout.artifact(name, "started")
        earlier = read_json(started) if started.is_file() else None
        if earlier is not None and earlier.get("fingerprint") != current:
            _clear_stage_folder(folder)
            earlier = None
        attempts, earlier_seconds = _earlier_attempts(earlier, folder)
        write_json(started, {"fingerprint": current, "launch": launch_id(), "since": time.time(),
                             "attempt": attempts + 1, "earlier_seconds": earlier_seconds})
        begin = time.perf_counter()
        _seed(config)
        with sharing_threads():
            result = stage.run(config, run_dir)
        seconds = earlier_seconds + time.perf_counter() - begin
        record = {"fingerprint": current, "seconds": round(seconds, 2),
                  "attempts": attempts + 1, "result": result}
        write_json(layout.artifact(name, "done"), record)
    return record


def _earlier_attempts(started: dict[str, Any] | None, folder: Path) -> tuple[int, float]:
    """How many attempts at a stage were stopped before this one, and the time they ran:
    each from its start to the last file it wrote (a checkpoint, its CSV log; not its
    `stage.log`, which this attempt's process already writes), the work this attempt
    resumes from. So a resumed stage's `seconds` counts all of its work, not only the
    resumed part."""
    if started is None or "since" not in started:
        return 0, 0.0
    skipped = {STAGE_FILES[name] for name in KEPT_ON_RESTART}
    last_write = max((p.stat().st_mtime for p in folder.rglob("*")
                      if p.is_file() and p.name not in skipped), default=started["since"])
    return (int(started.get("attempt", 1)),
            float(started.get("earlier_seconds", 0.0)) + max(0.0, last_write - started["since"]))


def _run_other_rank(config: ExperimentConfig, run_dir: Path, name: str) -> dict[str, Any]:
    """Rank > 0 of a multi-process stage: train beside rank 0, keep no books.

    Under srun every rank starts at once, so wait until this launch's rank 0 has claimed
    the stage folder for these settings (clearing a stale one first; another job sharing
    the folder may hold it meanwhile), or the stage is done.
    """
    started = RunLayout(config, run_dir).artifact(name, "started")
    while True:
        record = done_record(config, run_dir, name)
        if record is not None:
            return record
        claim = read_json(started) if started.is_file() else {}
        if claim.get("launch") == launch_id():
            forget_data_digests()  # rank 0 may have just made the data readable
            if claim.get("fingerprint") == fingerprint(config, name):
                break
        time.sleep(RANK_POLL_S)
    _seed(config)
    with sharing_threads():
        return {"fingerprint": claim["fingerprint"], "result": STAGES[name].run(config, run_dir)}


def _seed(config: ExperimentConfig) -> None:
    import lightning as L  # on use: the driver and the CLI need no training stack

    L.seed_everything(config.seed, workers=True, verbose=False)


def _clear_stage_folder(stage_dir: Path) -> None:
    """Remove a stale stage's outputs; its log stays, since the driver is writing to it."""
    kept = {STAGE_FILES[name] for name in KEPT_ON_RESTART}
    for child in stage_dir.iterdir():
        if child.name in kept:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
