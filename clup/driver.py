"""`clup run`: every stage as soon as the stages it needs are done, then the results.

The source model if needed, stages 1 and 2 at once, then stage 3 (on a machine without
GPUs SwAV also trains beside the source model, which it does not need). Every stage runs
as its own process (`clup stage NAME RUN_DIR`), so the concurrent stages get their own
GPUs (or share the CPU threads, taking over those of a stage that ends) and a crash in
one cannot corrupt another. The driver only orchestrates.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clup import launch
from clup.config import ExperimentConfig, dump_yaml
from clup.data.datasets import prepare_dataset, read_dataset
from clup.distributed import LAUNCHER_VARIABLE, local_processes
from clup.errors import StageFailed
from clup.io import read_json, write_json, write_text
from clup.launch import PreloadedProcess
from clup.pipeline import (
    CONCURRENT,
    LOG_NAME,
    STAGES,
    active_stages,
    active_upstream,
    done_record,
    stage_dir,
)
from clup.plan import check_cluster_count, check_inputs, datasets_used
from clup.presets import resolve_sfda
from clup.threads import POOL_VARIABLE, THREADS_VARIABLE

STATUS_EVERY_S = 20.0
POLL_S = 0.5


def plan_devices(gpus: list[str], cpu_threads: int, stage1_gpus: int = 1,
                 thread_pool: Path | None = None) -> dict[str, dict[str, str]]:
    """Environment per stage: stage 1 takes the first `stage1_gpus` GPUs and stage 2 (or a
    baseline's adaptation) the others, both at once; the source model and stage 3 take all.

    When stage 1 leaves no GPU over, the concurrent stages share its GPUs. Without GPUs,
    given a `thread_pool` every stage may use every thread and those running at once
    split them (clup/threads.py); without one the concurrent stages get half each.
    """
    threads = str(max(1, cpu_threads // 2))
    all_threads = str(max(1, cpu_threads))
    if not gpus and thread_pool is not None:
        shared = {"CUDA_VISIBLE_DEVICES": "", THREADS_VARIABLE: all_threads,
                  POOL_VARIABLE: str(thread_pool)}
        return {name: dict(shared) for name in ("source", "stage1", "stage2", "adapt",
                                                "stage3")}
    first = ",".join(gpus[:stage1_gpus])
    rest = ",".join(gpus[stage1_gpus:]) or first
    every = ",".join(gpus)
    return {
        "source": {"CUDA_VISIBLE_DEVICES": every, "CLUP_THREADS": all_threads},
        "stage1": {"CUDA_VISIBLE_DEVICES": first, "CLUP_THREADS": threads},
        "stage2": {"CUDA_VISIBLE_DEVICES": rest, "CLUP_THREADS": threads},
        "adapt": {"CUDA_VISIBLE_DEVICES": rest, "CLUP_THREADS": threads},
        "stage3": {"CUDA_VISIBLE_DEVICES": every, "CLUP_THREADS": all_threads},
    }


def visible_gpus(config: ExperimentConfig) -> list[str]:
    if config.runtime.accelerator == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_threads(config: ExperimentConfig) -> int:
    return config.runtime.threads or os.cpu_count() or 1


def run_experiment(config: ExperimentConfig, *, thread_pool: Path | None = None,
                   quiet: bool = False, echo: Callable[[str], None] = print,
                   cancel: threading.Event | None = None) -> dict[str, Any]:
    """Every stage not done yet, each as soon as the stages it needs are done.

    Without GPUs the stage processes running at once share the CPU threads through
    `thread_pool` (default: a folder in the run folder; a benchmark running several
    experiments at once passes one for all of them), so a stage that runs alone uses every
    core. `quiet` sends every stage's output to its log, none to the terminal. Setting
    `cancel` (from another thread) stops the running stages and raises `StageFailed`.
    """
    check_inputs(config)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus(config)
    env = plan_devices(gpus, cpu_threads(config), config.runtime.stage1_gpus,
                       thread_pool or run_dir / THREAD_POOL_NAME)
    if preloads_stages(config, env):
        launch.warm_up()  # imports while the data are prepared and read
    for key, dataset in datasets_used(config):
        prepare_dataset(dataset, key)
    target = read_dataset(config.require_target(), config.classes, "target")
    check_cluster_count(config, len(target["train"]))
    resolve_sfda(config, len(target["train"]))
    write_text(run_dir / "config.yaml", dump_yaml(config))
    _run_stages(config, run_dir, active_stages(config), env, stage_order(config, gpus),
                quiet, echo, cancel)
    return report_results(config, run_dir, echo)


THREAD_POOL_NAME = ".threads"


def stage_order(config: ExperimentConfig, gpus: list[str]) -> dict[str, tuple[str, ...]]:
    """The stages each active stage waits for: its upstream stages; on GPUs the concurrent
    stages also wait for the source model, which the device plan gives every GPU.

    Without GPUs SwAV, which needs no source model, trains while the source model does."""
    active = active_stages(config)
    order = {}
    for name in active:
        waits = active_upstream(config, STAGES[name])
        if gpus and name in CONCURRENT and "source" in active:
            waits = tuple(dict.fromkeys((*waits, "source")))
        order[name] = waits
    return order


def _command(name: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "clup.cli", "stage", name, str(run_dir)]


def _start(name: str, run_dir: Path, extra_env: dict[str, str], log: Path | None,
           preloaded: bool) -> subprocess.Popen | PreloadedProcess:
    env = {**os.environ, **extra_env, LAUNCHER_VARIABLE: "local"}
    return launch.start(_command(name, run_dir), env, log, preloaded)


def preloads_stages(config: ExperimentConfig, env: dict[str, dict[str, str]]) -> bool:
    """Whether the stages start as forks of one preloaded process (clup/launch.py): when
    `runtime.preload_stages` allows it, no stage has a GPU and each is one process."""
    cpu_only = all(POOL_VARIABLE in stage_env for stage_env in env.values())
    return (config.runtime.preload_stages and cpu_only
            and local_processes(config.runtime) == 1 and config.runtime.num_nodes == 1)


def _run_stages(config: ExperimentConfig, run_dir: Path, names: list[str],
                env: dict[str, dict[str, str]], order: dict[str, tuple[str, ...]],
                quiet: bool, echo: Callable[[str], None],
                cancel: threading.Event | None = None) -> None:
    """Start each stage once those it waits for are done; stop them all if one fails.

    A stage that starts with nothing beside it and nothing able to start before it ends
    prints to the terminal; the others write to their `stage.log`, and every
    `STATUS_EVERY_S` the driver prints each one's latest progress line.
    """
    pending = list(names)
    done: set[str] = set()
    running: dict[str, tuple[subprocess.Popen | PreloadedProcess, Path | None]] = {}
    preloaded = preloads_stages(config, env)
    last_status = time.monotonic()

    def ready() -> list[str]:
        return [n for n in pending if all(w in done for w in order[n])]

    try:
        while pending or running:
            if cancel is not None and cancel.is_set():
                raise StageFailed(f"{config.name}: stopped, since another run failed or was "
                                  "interrupted; rerun to continue")
            for name in ready():
                pending.remove(name)
                if done_record(config, run_dir, name) is not None:
                    echo(f"[clup] {STAGES[name].title}: done already, reused")
                    done.add(name)
                    continue
                log = None
                if quiet or running or ready() or _can_start_beside(name, pending, order):
                    log = stage_dir(config, run_dir, name) / LOG_NAME
                echo(f"[clup] {STAGES[name].title}: running"
                     + (f", log {log}" if log is not None else ""))
                running[name] = (_start(name, run_dir, env[name], log, preloaded), log)
            for name, (process, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                if code != 0:
                    where = f"read {log}" if log is not None else "its output is above"
                    raise StageFailed(f"{STAGES[name].title} failed (exit code {code}); {where}")
                done.add(name)
                echo(f"[clup] {STAGES[name].title}: finished in "
                     f"{_seconds(config, run_dir, name)}")
            logged = {n: log for n, (_, log) in running.items() if log is not None}
            if logged and time.monotonic() - last_status > STATUS_EVERY_S:
                last_status = time.monotonic()
                for name, log in logged.items():
                    echo(f"[clup] {STAGES[name].title}: {last_progress_line(log)}")
            if pending and not running and not ready():
                raise RuntimeError(f"stages {pending} wait for stages that never run")
            time.sleep(POLL_S)
    except BaseException:
        _stop([process for process, _ in running.values()])
        raise


def _can_start_beside(name: str, pending: list[str], order: dict[str, tuple[str, ...]]
                      ) -> bool:
    """Whether a pending stage does not wait for `name`, directly or through others."""
    def needs(stage: str) -> bool:
        return any(w == name or (w in order and needs(w)) for w in order[stage])

    return any(not needs(other) for other in pending)


def _stop(processes: list[subprocess.Popen | PreloadedProcess]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def last_progress_line(log: Path, tail: int = 4096) -> str:
    """The latest progress-bar state in a log (bars redraw with carriage returns)."""
    if not log.is_file():
        return "starting"
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - tail))
        text = handle.read().decode(errors="replace")
    pieces = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
    return pieces[-1][:160] if pieces else "starting"


def _seconds(config: ExperimentConfig, run_dir: Path, name: str) -> str:
    return f"{read_json(stage_dir(config, run_dir, name) / 'done.json')['seconds']:.1f} s"


METHOD_TITLES = {"clup": "CluP", "source_only": "source only", "shot": "SHOT", "nrc": "NRC",
                 "aad": "AaD", "tent": "Tent"}


def report_results(config: ExperimentConfig, run_dir: Path,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Collect the finished stages' results into `results.json` and print them."""
    results = collect_results(config, run_dir)
    write_json(run_dir / "results.json", results)
    echo(format_results(results))
    return results


def collect_results(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    stage1_dir = stage_dir(config, run_dir, "stage1")
    stage1 = read_json(stage1_dir / "summary.json")
    source_on_target = read_json(stage1_dir / "source_on_target.json")
    # The adapted model is the last stage's: stage 3 (CluP), adapt (a baseline), or none.
    last = [n for n in active_stages(config) if n in ("stage3", "adapt")]
    adapted = read_json(run_dir / last[0] / "metrics.json") if last else source_on_target
    results: dict[str, Any] = {
        "experiment": config.name,
        "method": config.method,
        "source_on_source": _source_accuracy(config, run_dir),
        "source_on_target": source_on_target["accuracy"],
        "target_accuracy": adapted["accuracy"],
        "evaluation_note": adapted.get("note"),
        "pseudo_label_accuracy": stage1.get("pseudo_label_accuracy"),
        "selected_accuracy": stage1.get("selected_accuracy"),
        "auc_purity": stage1.get("auc_purity"),
        "auc_confidence": stage1.get("auc_confidence"),
        "num_selected": stage1["num_selected"],
        "num_target_train": stage1["num_samples"],
        # The adapters' diagnostics (`SFDAAdapter.diagnostics`), with target labels only.
        "knn_label_agreement": adapted.get("knn_label_agreement"),
        "largest_class_share": _largest_final_share(adapted.get("class_share_per_epoch")),
        "seconds": {},
    }
    for name in active_stages(config):
        done = stage_dir(config, run_dir, name) / "done.json"
        if done.is_file():
            results["seconds"][name] = read_json(done)["seconds"]
    return results


def _largest_final_share(per_epoch: dict[str, list[float]] | None) -> float | None:
    """The share of the target train split taken by the most predicted class after the last
    epoch: near 1 when an adapter collapsed onto one class."""
    if not per_epoch:
        return None
    return max(shares[-1] for shares in per_epoch.values())


def _source_accuracy(config: ExperimentConfig, run_dir: Path) -> float | None:
    if config.source.checkpoint is None:
        return read_json(stage_dir(config, run_dir, "source") / "metrics.json")["accuracy"]
    from clup.models.checkpoint import load_classifier

    test = load_classifier(config.source.checkpoint).metadata.get("test", {})
    return test.get("accuracy")


def format_results(results: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "   n/a" if value is None else f"{100 * value:5.1f}%"

    gain = ""
    if results["target_accuracy"] is not None and results["source_on_target"] is not None:
        gain = f"  ({100 * (results['target_accuracy'] - results['source_on_target']):+.1f} points)"
    seconds = results["seconds"]
    title = f"{METHOD_TITLES[results['method']]} on target test"
    lines = [
        f"\nExperiment {results['experiment']}",
        f"  source model on source test    {pct(results['source_on_source'])}",
        f"  source model on target test    {pct(results['source_on_target'])}  (source only)",
        f"  {title:<31}{pct(results['target_accuracy'])}{gain}",
        f"  pseudo-labels, all train       {pct(results['pseudo_label_accuracy'])}"
        f"  (n={results['num_target_train']})",
        f"  pseudo-labels, selected        {pct(results['selected_accuracy'])}"
        f"  (n={results['num_selected']})",
        *([f"  (no target accuracy: {results['evaluation_note']})"]
          if results.get("evaluation_note") else []),
        *([f"  kNN sharing the true label     {pct(results['knn_label_agreement'])}"
           "  (at the start, diagnosis only)"]
          if results.get("knn_label_agreement") is not None else []),
        *([f"  largest class share at the end {pct(results['largest_class_share'])}"
           "  (of target train predictions)"]
          if results.get("largest_class_share") is not None else []),
        "  stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
        "  (stages needing only the source model ran at the same time; without GPUs "
        "stage2 also ran beside source)",
    ]
    return "\n".join(lines)
