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
from clup.data.fingerprint import forget_data_digests
from clup.devices import cpu_threads, plan_devices, visible_gpus
from clup.distributed import LAUNCHER_VARIABLE, local_processes
from clup.errors import StageFailed
from clup.io import read_json
from clup.launch import PreloadedProcess
from clup.pipeline import active_stages, active_upstream, done_record, running_alone
from clup.plan import check_cluster_count, check_inputs, datasets_used
from clup.presets import resolve_sfda
from clup.registry import CONCURRENT, SOURCE, STAGES, RunLayout
from clup.results import report_results
from clup.run_folder import CONFIG_DIGEST_VARIABLE, own_run_folder, write_run_config
from clup.threads import POOL_VARIABLE

STATUS_EVERY_S = 20.0
POLL_S = 0.5


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
    layout = RunLayout(config, run_dir)
    with own_run_folder(layout.file("owner"), dump_yaml(config), echo):
        gpus = visible_gpus(config)
        env = plan_devices(gpus, cpu_threads(config), config.runtime.stage1_gpus,
                           thread_pool or layout.file("threads"), running_alone(config))
        if preloads_stages(config, env):
            launch.warm_up()  # imports while the data are prepared and read
        for key, dataset in datasets_used(config):
            prepare_dataset(dataset, key)
        forget_data_digests()  # what a stage's fingerprint covers is read from here on
        target = read_dataset(config.require_target(), config.classes, "target")
        check_cluster_count(config, len(target["train"]))
        resolve_sfda(config, len(target["train"]))
        digest = write_run_config(layout.file("config"), dump_yaml(config))
        env = {name: {**stage_env, CONFIG_DIGEST_VARIABLE: digest}
               for name, stage_env in env.items()}
        run_stages(config, run_dir, active_stages(config), env, stage_order(config, gpus),
                   quiet, echo, cancel)
        return report_results(config, run_dir, echo)


def stage_order(config: ExperimentConfig, gpus: list[str]) -> dict[str, tuple[str, ...]]:
    """The stages each active stage waits for: its upstream stages; on GPUs the concurrent
    stages also wait for the source model, which the device plan gives every GPU.

    Without GPUs SwAV, which needs no source model, trains while the source model does."""
    active = active_stages(config)
    order = {}
    for name in active:
        waits = active_upstream(config, STAGES[name])
        if gpus and name in CONCURRENT and SOURCE in active:
            waits = tuple(dict.fromkeys((*waits, SOURCE)))
        order[name] = waits
    return order


def stage_command(name: str, run_dir: Path) -> list[str]:
    """The command a stage process runs; tests replace it to run scripts of their own."""
    return [sys.executable, "-m", "clup.cli", "stage", name, str(run_dir)]


def _start(name: str, run_dir: Path, extra_env: dict[str, str], log: Path | None,
           preloaded: bool) -> subprocess.Popen | PreloadedProcess:
    env = {**os.environ, **extra_env, LAUNCHER_VARIABLE: "local"}
    return launch.start(stage_command(name, run_dir), env, log, preloaded)


def preloads_stages(config: ExperimentConfig, env: dict[str, dict[str, str]]) -> bool:
    """Whether the stages start as forks of one preloaded process (clup/launch.py): when
    `runtime.preload_stages` allows it, no stage has a GPU and each is one process."""
    cpu_only = all(POOL_VARIABLE in stage_env for stage_env in env.values())
    return (config.runtime.preload_stages and cpu_only
            and local_processes(config.runtime) == 1 and config.runtime.num_nodes == 1)


def run_stages(config: ExperimentConfig, run_dir: Path, names: list[str],
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
                    log = RunLayout(config, run_dir).artifact(name, "log")
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
        stop_stages([process for process, _ in running.values()])
        raise


def _can_start_beside(name: str, pending: list[str], order: dict[str, tuple[str, ...]]
                      ) -> bool:
    """Whether a pending stage does not wait for `name`, directly or through others."""
    def needs(stage: str) -> bool:
        return any(w == name or (w in order and needs(w)) for w in order[stage])

    return any(not needs(other) for other in pending)


def stop_stages(processes: list[subprocess.Popen | PreloadedProcess]) -> None:
    """Terminate the running stage processes, and kill those still running after 30 s."""
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
    return f"{read_json(RunLayout(config, run_dir).artifact(name, 'done'))['seconds']:.1f} s"
