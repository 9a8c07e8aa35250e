"""Runs that must not go silently wrong: two runs of one name, data changed under a
finished run, stages run out of order, and the books a stopped stage leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clup.cli import main
from clup.config import dump_yaml, experiment_from_dict
from clup.data.fingerprint import forget_data_digests
from clup.errors import ConfigError
from clup.io import write_json, write_text
from clup.pipeline import _earlier_attempts, fingerprint
from clup.registry import RUN_FILES, SOURCE, STAGE1, STAGE3, RunLayout
from clup.run_folder import CONFIG_DIGEST_VARIABLE, own_run_folder
from clup.stages.common import resume_checkpoint
from tests.conftest import tiny_experiment, write_experiment


def test_a_second_run_of_one_name_with_other_settings_is_refused(tmp_path: Path) -> None:
    """The reproduction of the issue: the second run used to overwrite the first's
    config.yaml, and both trained under the second's settings."""
    path = write_experiment(tmp_path / "tiny.yaml", tiny_experiment(tmp_path))
    command = [sys.executable, "-m", "clup.cli", "run", str(path), "name=race"]
    first = subprocess.Popen([*command, "cluster_labeler.selection_ratio=0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    owner = tmp_path / "runs" / "race" / RUN_FILES["owner"]
    deadline = time.monotonic() + 120
    while not (owner.is_file() and owner.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = subprocess.run([*command, "cluster_labeler.selection_ratio=0.9"],
                            capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2
    assert "in use by another clup run with other settings" in second.stderr
    assert "name=..." in second.stderr
    summary = json.loads((tmp_path / "runs/race/stage1/summary.json").read_text())
    assert summary["num_selected"] <= 0.2 * 84  # 0.9 would keep about 75 of the 84
    assert "selection_ratio: 0.2" in (tmp_path / "runs/race/config.yaml").read_text()


def test_a_second_run_with_the_same_settings_waits_for_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "run" / RUN_FILES["owner"]
    events: list[str] = []

    def first() -> None:
        with own_run_folder(lock, "settings: 1"):
            events.append("first in")
            time.sleep(0.5)
            events.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    while not events:
        time.sleep(0.01)
    with own_run_folder(lock, "settings: 1", echo=events.append):
        events.append("second in")
    thread.join()
    assert events[0] == "first in" and events[-2:] == ["first out", "second in"]
    assert "same settings is running" in events[1]
    with own_run_folder(lock, "settings: 2"):  # free again: any settings may take it
        pass


def test_a_stage_refuses_a_config_its_run_did_not_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run_folder(tmp_path)
    monkeypatch.setenv(CONFIG_DIGEST_VARIABLE, "0" * 64)
    assert main(["stage", SOURCE, str(run_dir)]) == 2
    assert "changed after this run started" in capsys.readouterr().err
    assert not (run_dir / SOURCE).exists()


def test_a_stage_before_its_upstream_stages_says_which_to_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _run_folder(tmp_path)
    assert main(["stage", STAGE3, str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "stage 3, PseudoLabelFinetuner needs stage 1, ClusterLabeler to finish first" in err
    assert f"clup stage {STAGE1} {run_dir}" in err and "Traceback" not in err


def test_a_finished_stage_says_it_is_done(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _run_folder(tmp_path)
    config = experiment_from_dict(tiny_experiment(tmp_path))
    done = RunLayout(config, run_dir).artifact(SOURCE, "done")
    write_json(done, {"fingerprint": fingerprint(config, SOURCE), "seconds": 1.0,
                      "result": {}})
    assert main(["stage", SOURCE, str(run_dir)]) == 0
    assert f"done already under these settings ({done}); nothing to do" in \
        capsys.readouterr().out


def _run_folder(tmp_path: Path) -> Path:
    config = experiment_from_dict(tiny_experiment(tmp_path))
    write_text(RunLayout(config, config.run_dir).file("config"), dump_yaml(config))
    return config.run_dir


def _manifest_experiment(tmp_path: Path, rows: int) -> dict:
    root = tmp_path / "target"
    root.mkdir(exist_ok=True)
    lines = ["path,label,split"]
    for i in range(rows):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{i % 7},{'test' if i % 4 == 0 else 'train'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tiny_experiment(tmp_path, target={"kind": "manifest",
                                             "path": str(root / "manifest.csv")})


def test_the_fingerprint_follows_the_images_not_only_the_settings(tmp_path: Path) -> None:
    config = experiment_from_dict(_manifest_experiment(tmp_path, 12))
    root = tmp_path / "target"
    forget_data_digests()
    before = {name: fingerprint(config, name) for name in (STAGE1, STAGE3)}
    forget_data_digests()
    assert {name: fingerprint(config, name) for name in before} == before  # nothing changed

    _manifest_experiment(tmp_path, 14)  # two rows appended
    forget_data_digests()
    appended = fingerprint(config, STAGE1)
    assert appended != before[STAGE1] and fingerprint(config, STAGE3) != before[STAGE3]

    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "3.png")  # an image replaced
    forget_data_digests()
    assert fingerprint(config, STAGE1) != appended
    # The source stage reads the source data, which did not change.
    assert fingerprint(config, SOURCE) == fingerprint(
        experiment_from_dict(tiny_experiment(tmp_path)), SOURCE)


def test_a_resumed_stage_counts_the_time_of_its_earlier_attempts(tmp_path: Path) -> None:
    folder = tmp_path / STAGE1
    (folder / "checkpoints").mkdir(parents=True)
    checkpoint, log = folder / "checkpoints" / "last.ckpt", folder / "stage.log"
    checkpoint.write_bytes(b"x")
    log.write_text("this attempt's output")
    os.utime(checkpoint, (1000.0 + 40, 1000.0 + 40))  # saved 40 s into the attempt
    assert _earlier_attempts(None, folder) == (0, 0.0)
    started = {"since": 1000.0, "attempt": 2, "earlier_seconds": 15.0}
    assert _earlier_attempts(started, folder) == (2, 55.0)  # the log, written now, is not it


def test_a_cut_off_resume_checkpoint_is_named_and_passed_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut off")
    assert resume_checkpoint(tmp_path) is None
    out = capsys.readouterr().out
    assert "last.ckpt is cut off" in out and "the stage starts over" in out


def test_owner_lock_refuses_other_settings_while_held(tmp_path: Path) -> None:
    lock = tmp_path / "run" / RUN_FILES["owner"]
    with own_run_folder(lock, "a: 1"), pytest.raises(ConfigError, match="other settings"), \
            own_run_folder(lock, "a: 2"):
        pass
