"""`clup run`: source model if needed, stages 1 and 2 at once, then stage 3, then results.

Every stage runs as its own process (`clup stage NAME RUN_DIR`), so the two
concurrent stages get their own GPUs (or their share of CPU threads) and a crash
in one cannot corrupt the other. The driver only orchestrates.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clup.config import ExperimentConfig, dump_yaml
from clup.data.datasets import prepare_dataset, read_dataset
from clup.distributed import LAUNCHER_VARIABLE
from clup.errors import StageFailed
from clup.io import read_json, write_json, write_text
from clup.pipeline import (
    CONCURRENT,
    LOG_NAME,
    STAGES,
    active_stages,
    done_record,
    stage_dir,
)
from clup.plan import check_cluster_count, check_inputs, datasets_used

STATUS_EVERY_S = 20.0


def plan_devices(gpus: list[str], cpu_threads: int, stage1_gpus: int = 1
                 ) -> dict[str, dict[str, str]]:
    """Environment per stage: stage 1 takes the first `stage1_gpus` GPUs and stage 2 (or a
    baseline's adaptation) the others, both at once; the source model and stage 3 take all.

    When stage 1 leaves no GPU over, the concurrent stages share its GPUs; without GPUs
    they split the CPU threads.
    """
    threads = str(max(1, cpu_threads // 2))
    all_threads = str(max(1, cpu_threads))
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


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    check_inputs(config)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", dump_yaml(config))
    for key, dataset in datasets_used(config):
        prepare_dataset(dataset, key)
    target = read_dataset(config.require_target(), config.classes, "target")
    check_cluster_count(config, len(target["train"]))
    env = plan_devices(visible_gpus(config), cpu_threads(config),
                       config.runtime.stage1_gpus)
    if config.source.checkpoint is None:
        _run_in_sequence(config, run_dir, "source", env["source"])
    active = active_stages(config)
    _run_concurrently(config, run_dir, [n for n in CONCURRENT if n in active], env)
    if "stage3" in active:
        _run_in_sequence(config, run_dir, "stage3", env["stage3"])
    return report_results(config, run_dir)


def _command(name: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "clup.cli", "stage", name, str(run_dir)]


def _die_with_parent() -> None:
    """Linux: a stage process gets SIGTERM if the driver dies, even by SIGKILL."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start(name: str, run_dir: Path, extra_env: dict[str, str], log: Path | None
           ) -> subprocess.Popen:
    env = {**os.environ, **extra_env, LAUNCHER_VARIABLE: "local"}
    output = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        output = log.open("ab")
    return subprocess.Popen(_command(name, run_dir), env=env, stdout=output,
                            stderr=subprocess.STDOUT if output else None,
                            preexec_fn=_die_with_parent)


def _run_in_sequence(config: ExperimentConfig, run_dir: Path, name: str,
                     env: dict[str, str]) -> None:
    if done_record(config, run_dir, name) is not None:
        print(f"[clup] {STAGES[name].title}: done already, reused")
        return
    print(f"[clup] {STAGES[name].title}: running")
    process = _start(name, run_dir, env, None)
    try:
        code = process.wait()
    except BaseException:
        _stop([process])
        raise
    if code != 0:
        raise StageFailed(f"{STAGES[name].title} failed (exit code {code}); its output is above")
    print(f"[clup] {STAGES[name].title}: finished in {_seconds(config, run_dir, name)}")


def _run_concurrently(config: ExperimentConfig, run_dir: Path, names: list[str],
                      env: dict[str, dict[str, str]]) -> None:
    running: dict[str, subprocess.Popen] = {}
    logs = {name: stage_dir(config, run_dir, name) / LOG_NAME for name in names}
    for name in names:
        if done_record(config, run_dir, name) is not None:
            print(f"[clup] {STAGES[name].title}: done already, reused")
            continue
        print(f"[clup] {STAGES[name].title}: running, log {logs[name]}")
        running[name] = _start(name, run_dir, env[name], logs[name])
    last_status = time.monotonic()
    try:
        while running:
            for name, process in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                if code != 0:
                    _stop(list(running.values()))
                    raise StageFailed(
                        f"{STAGES[name].title} failed (exit code {code}); read {logs[name]}"
                    )
                print(f"[clup] {STAGES[name].title}: finished in "
                      f"{_seconds(config, run_dir, name)}")
            if running and time.monotonic() - last_status > STATUS_EVERY_S:
                last_status = time.monotonic()
                for name in running:
                    print(f"[clup] {STAGES[name].title}: {last_progress_line(logs[name])}")
            time.sleep(0.5)
    except BaseException:
        _stop(list(running.values()))
        raise


def _stop(processes: list[subprocess.Popen]) -> None:
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


def report_results(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Collect the finished stages' results into `results.json` and print them."""
    results = collect_results(config, run_dir)
    write_json(run_dir / "results.json", results)
    print(format_results(results))
    return results


def collect_results(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    stage1 = read_json(run_dir / "stage1" / "summary.json")
    source_on_target = read_json(run_dir / "stage1" / "source_on_target.json")
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
        "seconds": {},
    }
    for name in active_stages(config):
        done = stage_dir(config, run_dir, name) / "done.json"
        if done.is_file():
            results["seconds"][name] = read_json(done)["seconds"]
    return results


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
        "  stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
        "  (stage1 and stage2 or adapt ran at the same time)",
    ]
    return "\n".join(lines)
