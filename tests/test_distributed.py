"""Rank bookkeeping of multi-process stages, read from the launchers' environment."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import LightningEnvironment

from clup import pipeline
from clup.config import RuntimeConfig, experiment_from_dict
from clup.distributed import (
    cluster_environment,
    device_layout,
    is_rank_zero,
    local_processes,
)
from clup.errors import ConfigError
from clup.io import write_json
from clup.pipeline import fingerprint, run_stage
from clup.registry import STAGES, stage_dir
from clup.stages.common import resume_checkpoint
from tests.conftest import tiny_experiment

LAUNCHER_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "SLURM_JOB_ID",
                      "TORCHELASTIC_RUN_ID", "CLUP_DEVICES", "CLUP_NUM_NODES", "CLUP_LAUNCHER")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", ["RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"])
def test_any_launcher_rank_other_than_zero_marks_a_worker(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_rank_zero()
    monkeypatch.setenv(name, "0")
    assert is_rank_zero()
    monkeypatch.setenv(name, "3")
    assert not is_rank_zero()


def test_slurm_job_environment_decides_the_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = RuntimeConfig(devices=2, num_nodes=1)
    assert device_layout(runtime) == (2, 1)
    assert device_layout(RuntimeConfig()) == ("auto", 1)
    monkeypatch.setenv("CLUP_DEVICES", "4")
    monkeypatch.setenv("CLUP_NUM_NODES", "3")
    assert device_layout(runtime) == (4, 3)
    assert local_processes(runtime) == 4
    monkeypatch.setenv("CLUP_NUM_NODES", "two")
    with pytest.raises(ConfigError, match="CLUP_NUM_NODES must be a positive integer, got 'two'"):
        device_layout(runtime)


def test_runtime_devices_accepts_a_count_or_auto() -> None:
    experiment = tiny_experiment(Path("/tmp"))
    for devices in (2, "auto"):
        experiment["runtime"] = {"devices": devices}
        assert experiment_from_dict(experiment).runtime.devices == devices
    experiment["runtime"] = {"devices": "all"}
    with pytest.raises(ConfigError, match="runtime.devices must be an integer, got 'all' or "
                                          "must be one of \\['auto'\\]"):
        experiment_from_dict(experiment)
    experiment["runtime"] = {"strategy": "horovod"}
    with pytest.raises(ConfigError, match="runtime.strategy must be one of"):
        experiment_from_dict(experiment)


def test_resume_prefers_the_newest_whole_checkpoint(tmp_path: Path) -> None:
    """The epoch checkpoint or Lightning's requeue one, whichever is newer; one cut off
    mid-write (a job killed while saving) is passed over."""
    assert resume_checkpoint(tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"epoch": 3}, last)
    assert resume_checkpoint(tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    torch.save({"epoch": 4}, hpc)
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert resume_checkpoint(tmp_path) == str(hpc)
    os.utime(hpc, (time.time() - 120, time.time() - 120))
    assert resume_checkpoint(tmp_path) == str(last)
    cut = tmp_path / "hpc_ckpt_2.ckpt"
    cut.write_bytes(hpc.read_bytes()[:-100])
    assert resume_checkpoint(tmp_path) == str(last)


def test_stages_started_by_the_driver_use_lightnings_local_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a SLURM allocation Lightning would read srun's ranks: the local driver's
    stages (and the ranks Lightning starts from them) must not."""
    assert cluster_environment() is None
    monkeypatch.setenv("CLUP_LAUNCHER", "local")
    (environment,) = cluster_environment()
    assert isinstance(environment, LightningEnvironment)


calls: list[str] = []


def record_call(config, paths) -> dict:
    calls.append(str(paths.layout.run_dir))
    return {"ran": True}


def test_other_ranks_wait_for_rank_zero_then_train_without_books(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path))
    stage = STAGES["stage2"]
    monkeypatch.setitem(STAGES, "stage2", dataclasses.replace(stage,
                                                              entry=f"{__name__}:record_call"))
    monkeypatch.setattr(pipeline, "RANK_POLL_S", 0.01)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    calls.clear()
    folder = stage_dir(config, config.run_dir, "stage2")
    folder.mkdir(parents=True)
    # Rank 0 has not claimed the folder yet: another job sharing it holds it, same settings.
    current = fingerprint(config, "stage2")
    write_json(folder / "started.json", {"fingerprint": current, "launch": "slurm:76.0"})
    claim = threading.Timer(0.3, write_json, [folder / "started.json",
                                              {"fingerprint": current, "launch": "slurm:77.0"}])
    begin = time.monotonic()
    claim.start()
    record = run_stage(config, config.run_dir, "stage2")
    claim.join()
    assert time.monotonic() - begin >= 0.3  # it waited for the claim
    assert record["result"] == {"ran": True} and calls == [str(config.run_dir)]
    assert not (folder / "done.json").exists() and not (folder / ".lock").exists()

    write_json(folder / "done.json", {"fingerprint": fingerprint(config, "stage2"),
                                      "seconds": 1.0, "result": {"from": "rank 0"}})
    assert run_stage(config, config.run_dir, "stage2")["result"] == {"from": "rank 0"}
    assert calls == [str(config.run_dir)]
