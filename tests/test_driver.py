import json
import signal
import sys
from pathlib import Path

import pytest

from clup import driver
from clup.config import experiment_from_dict
from clup.devices import plan_devices, visible_gpus
from clup.driver import last_progress_line
from clup.errors import StageFailed
from clup.pipeline import fingerprint
from clup.registry import stage_dir
from tests.conftest import tiny_experiment


def test_cpu_plan_splits_threads_between_concurrent_stages() -> None:
    plan = plan_devices([], cpu_threads=8)
    assert plan["stage1"] == {"CUDA_VISIBLE_DEVICES": "", "CLUP_THREADS": "4"}
    assert plan["stage2"]["CLUP_THREADS"] == "4"
    assert plan["stage3"]["CLUP_THREADS"] == "8"
    assert plan_devices([], cpu_threads=1)["stage1"]["CLUP_THREADS"] == "1"


def test_gpu_plan_gives_stage1_one_gpu_and_stage2_the_rest() -> None:
    plan = plan_devices(["0", "1", "2", "3"], cpu_threads=16)
    assert plan["stage1"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert plan["stage2"]["CUDA_VISIBLE_DEVICES"] == "1,2,3"
    assert plan["stage3"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    single = plan_devices(["5"], cpu_threads=16)
    assert single["stage1"]["CUDA_VISIBLE_DEVICES"] == single["stage2"]["CUDA_VISIBLE_DEVICES"]


def test_last_progress_line_reads_carriage_return_redraws(tmp_path: Path) -> None:
    log = tmp_path / "stage.log"
    assert last_progress_line(log) == "starting"
    log.write_text("setup\nEpoch 0: 10%\rEpoch 0: 55%\r")
    assert last_progress_line(log) == "Epoch 0: 55%"


def test_fingerprints_follow_only_relevant_settings(tmp_path: Path) -> None:
    base = tiny_experiment(tmp_path)
    config = experiment_from_dict(base)
    prints = {s: fingerprint(config, s) for s in ("source", "stage1", "stage2", "stage3")}

    threads = experiment_from_dict({**base, "runtime": {"threads": 1}})
    assert {s: fingerprint(threads, s) for s in prints} == prints

    ratio = experiment_from_dict(
        {**base, "cluster_labeler": {"num_clusters": 10, "selection_ratio": 0.2}})
    changed = {s for s in prints if fingerprint(ratio, s) != prints[s]}
    assert changed == {"stage1", "stage3"}

    swav = experiment_from_dict({**base, "swav": {**base["swav"], "epochs": 3}})
    assert {s for s in prints if fingerprint(swav, s) != prints[s]} == {"stage2", "stage3"}


def test_gpu_plan_takes_the_configured_number_of_gpus_for_stage1() -> None:
    plan = plan_devices(["0", "1", "2", "3"], cpu_threads=16, stage1_gpus=2)
    assert plan["stage1"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert plan["stage2"]["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert plan["adapt"]["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert plan["stage3"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    # Nothing left for stage 2: it shares stage 1's GPUs rather than falling back to the CPU.
    greedy = plan_devices(["0", "1"], cpu_threads=16, stage1_gpus=4)
    assert greedy["stage2"]["CUDA_VISIBLE_DEVICES"] == "0,1"


FAKE_STAGE = """
import json, os, sys, time
from pathlib import Path
name, folder, record, partner = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
marks = record.parent
(marks / f"{name}.env").write_text(json.dumps({k: os.environ.get(k, "") for k in
    ("CUDA_VISIBLE_DEVICES", "CLUP_THREADS", "CLUP_THREAD_POOL")}))
(marks / f"{name}.started").write_text(str(time.time()))
deadline = time.time() + 30
while partner != "-" and not (marks / f"{partner}.started").exists():
    if time.time() > deadline:
        sys.exit(3)
    time.sleep(0.05)
(marks / f"{name}.ended").write_text(str(time.time()))
folder.mkdir(parents=True, exist_ok=True)
(folder / "done.json").write_text(record.read_text())
"""


def _fake_stages(config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                 partners: dict[str, str]) -> Path:
    """Replace each stage's command by FAKE_STAGE, which records its environment and times
    and waits until its partner stage has started."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE)

    def command(name: str, run_dir: Path) -> list[str]:
        record = marks / f"{name}.record.json"
        record.write_text(json.dumps({"fingerprint": fingerprint(config, name), "seconds": 1.0}))
        return [sys.executable, str(script), name, str(stage_dir(config, run_dir, name)),
                str(record), partners[name]]

    monkeypatch.setattr(driver, "stage_command", command)
    return marks


def _times(marks: Path, names: list[str]) -> dict[str, dict[str, float]]:
    return {name: {event: float((marks / f"{name}.{event}").read_text())
                   for event in ("started", "ended")} for name in names}


def test_driver_starts_stages_with_their_gpus_and_runs_1_and_2_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake device list: each stage process must see its own CUDA_VISIBLE_DEVICES, and
    stages 1 and 2 must be running at the same time (each waits until the other started)."""
    config = experiment_from_dict(tiny_experiment(
        tmp_path, runtime={"accelerator": "auto", "num_workers": 0, "stage1_gpus": 1}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    gpus = visible_gpus(config)
    assert gpus == ["4", "5", "6"]
    env = plan_devices(gpus, cpu_threads=4, stage1_gpus=config.runtime.stage1_gpus)
    partners = {"stage1": "stage2", "stage2": "stage1", "stage3": "-"}
    marks = _fake_stages(config, tmp_path, monkeypatch, partners)
    order = {"stage1": (), "stage2": (), "stage3": ("stage1", "stage2")}
    driver.run_stages(config, config.run_dir, list(partners), env, order, False, print)

    seen = {name: json.loads((marks / f"{name}.env").read_text())["CUDA_VISIBLE_DEVICES"]
            for name in partners}
    assert seen == {"stage1": "4", "stage2": "5,6", "stage3": "4,5,6"}
    times = _times(marks, list(partners))
    assert times["stage1"]["started"] < times["stage2"]["ended"]
    assert times["stage2"]["started"] < times["stage1"]["ended"]
    assert times["stage3"]["started"] >= max(times["stage1"]["ended"], times["stage2"]["ended"])


def test_without_gpus_swav_trains_beside_the_source_model_sharing_one_thread_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU SwAV needs no source model: it starts with it (each waits for the other to
    start), stage 1 follows the source, stage 3 both; every stage gets the pool and every
    thread. With GPUs, stages 1 and 2 both wait for the source model."""
    experiment = tiny_experiment(tmp_path)
    experiment["source"].pop("checkpoint", None)
    config = experiment_from_dict(experiment)
    assert "source" in driver.active_stages(config)
    order = driver.stage_order(config, gpus=[])
    assert order == {"source": (), "stage1": ("source",), "stage2": (),
                     "stage3": ("stage1", "stage2")}
    assert driver.stage_order(config, gpus=["0"])["stage2"] == ("source",)
    pool = tmp_path / "pool"
    env = plan_devices([], cpu_threads=2, thread_pool=pool)
    partners = {"source": "stage2", "stage2": "source", "stage1": "-", "stage3": "-"}
    marks = _fake_stages(config, tmp_path, monkeypatch, partners)
    lines: list[str] = []
    driver.run_stages(config, config.run_dir, list(order), env, order, False, lines.append)

    times = _times(marks, list(partners))
    assert times["source"]["started"] < times["stage2"]["ended"]
    assert times["stage2"]["started"] < times["source"]["ended"]
    assert times["stage1"]["started"] >= times["source"]["ended"]
    assert times["stage3"]["started"] >= max(times["stage1"]["ended"], times["stage2"]["ended"])
    envs = [json.loads((marks / f"{name}.env").read_text()) for name in partners]
    assert all(e["CLUP_THREADS"] == "2" and e["CLUP_THREAD_POOL"] == str(pool) for e in envs)
    # The two that started together log to files; stage 3, alone, prints to the terminal.
    assert any("source model: running, log" in line for line in lines)
    assert any(line.endswith("PseudoLabelFinetuner: running") for line in lines)


def test_a_failing_stage_stops_the_one_beside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path))
    script = tmp_path / "stage.py"
    script.write_text("import sys, time\nif sys.argv[1] == 'stage1':\n    sys.exit(4)\n"
                      "time.sleep(60)\n")
    monkeypatch.setattr(driver, "stage_command",
                        lambda name, run_dir: [sys.executable, str(script), name])
    stopped = _record_stops(monkeypatch)
    with pytest.raises(StageFailed, match="ClusterLabeler failed .exit code 4"):
        driver.run_stages(config, config.run_dir, ["stage1", "stage2"], plan_devices([], 2),
                           {"stage1": (), "stage2": ()}, False, print)
    assert _terminated(stopped)  # stage 2 was stopped, not waited for


def _record_stops(monkeypatch: pytest.MonkeyPatch) -> list:
    stopped: list = []
    real = driver.stop_stages

    def stop(processes: list) -> None:
        stopped.extend(processes)
        real(processes)

    monkeypatch.setattr(driver, "stop_stages", stop)
    return stopped


def _terminated(processes: list) -> bool:
    """Every process was ended by SIGTERM (a negative exit code), none ran to its end."""
    return bool(processes) and all(p.returncode == -signal.SIGTERM for p in processes)


def test_a_cancelled_run_stops_its_stages(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What a benchmark does to its other runs when one fails or Ctrl-C comes."""
    import threading

    config = experiment_from_dict(tiny_experiment(tmp_path))
    script = tmp_path / "stage.py"
    script.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(driver, "stage_command",
                        lambda name, run_dir: [sys.executable, str(script)])
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    stopped = _record_stops(monkeypatch)
    with pytest.raises(StageFailed, match="stopped, since another run failed"):
        driver.run_stages(config, config.run_dir, ["stage2"], plan_devices([], 2),
                           {"stage2": ()}, True, print, cancel)
    assert _terminated(stopped)
