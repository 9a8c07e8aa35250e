"""Real multi-process DDP on the CPU: 2 processes with gloo, started as Lightning starts them
(the stage command re-run per rank), on the tiny experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clup.config import experiment_from_dict
from clup.models.backbones import build_backbone
from clup.models.checkpoint import load_classifier
from clup.pipeline import run_stage
from clup.stages.swav_pretrainer import SwAVPretrainer
from tests.conftest import tiny_experiment

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="DDP tests run on Linux CI")


def stage(name: str, run_dir: Path) -> subprocess.CompletedProcess:
    # Two ranks on two cores: one thread each (CLUP_THREADS is split between the ranks).
    env = {**os.environ, "CLUP_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    for variable in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(variable, None)
    return subprocess.run([sys.executable, "-m", "clup.cli", "stage", name, str(run_dir)],
                          capture_output=True, text=True, timeout=300, env=env)


def run_folder(root: Path, name: str, experiment: dict, devices: int) -> Path:
    experiment = {**experiment, "name": name,
                  "runtime": {**experiment["runtime"], "devices": devices}}
    run_dir = Path(experiment["output_root"]) / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    shutil.copytree(root / "source", run_dir / "source")
    return run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A source model trained once, in this process, for every test here."""
    root = tmp_path_factory.mktemp("ddp")
    experiment = tiny_experiment(root)
    experiment["swav"]["epochs"] = 1
    config = experiment_from_dict(experiment)
    config.run_dir.mkdir(parents=True)
    run_stage(config, config.run_dir, "source")
    return config.run_dir, experiment


def test_stage1_in_two_processes_writes_the_same_tables_as_one(trained) -> None:
    root, experiment = trained
    tables = {}
    for devices in (1, 2):
        run_dir = run_folder(root, f"stage1-{devices}", experiment, devices)
        result = stage("stage1", run_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        tables[devices] = {
            name: (run_dir / "stage1" / name).read_text()
            for name in ("pseudo_labels.csv", "summary.json", "source_on_target.json")
        }
        assert not list((run_dir / "stage1" / "features").glob("*.rank*.bin"))
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    assert tables[2]["pseudo_labels.csv"] == tables[1]["pseudo_labels.csv"]
    one, two = (json.loads(tables[d]["summary.json"]) for d in (1, 2))
    one.pop("labelling_seconds"), two.pop("labelling_seconds")
    assert two == one
    # The test split (35 images) is scored across both ranks, each image counted once.
    metrics = json.loads(tables[2]["source_on_target.json"])
    assert metrics == json.loads(tables[1]["source_on_target.json"])
    assert sum(map(sum, metrics["confusion_matrix"])) == 35


def test_swav_and_stage3_train_in_two_processes(trained) -> None:
    root, experiment = trained
    # With SwAV's queues on from the first epoch: each rank keeps its own.
    swav = {**experiment["swav"], "queue_length": 32, "queue_start_epoch": 0}
    run_dir = run_folder(root, "ddp-2", {**experiment, "swav": swav}, 2)
    for name in ("stage1", "stage2", "stage3"):
        result = stage(name, run_dir)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr, name
        assert json.loads((run_dir / name / "done.json").read_text())["fingerprint"]
        assert not (run_dir / name / "checkpoints").exists()
    swav = json.loads((run_dir / "stage2/metrics.json").read_text())
    assert swav["epochs"] == 1 and swav["final_loss"] == swav["final_loss"]  # not NaN
    metrics = json.loads((run_dir / "stage3/metrics.json").read_text())
    assert sum(map(sum, metrics["confusion_matrix"])) == 35
    assert load_classifier(run_dir / "stage3/model.ckpt").classes[0] == "Surprise"


def test_swav_queues_are_kept_out_of_ddps_buffer_broadcast(trained) -> None:
    """DDP copies rank 0's buffers to every rank before each step; SwAV's queues are
    buffers and must stay each rank's own."""
    _, experiment = trained
    config = experiment_from_dict({**experiment, "swav": {**experiment["swav"],
                                                          "queue_length": 32}})
    module = SwAVPretrainer(build_backbone(config.backbone), config.swav)
    buffers = {name for name, _ in module.named_buffers()}
    queues = {name for name in buffers if name.startswith("queues.")}
    assert len(queues) == 2 * config.swav.n_global_crops  # each queue: bank and pointer
    assert set(module._ddp_params_and_buffers_to_ignore) == queues
