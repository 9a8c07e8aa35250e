from pathlib import Path

from clup.config import experiment_from_dict
from clup.driver import last_progress_line, plan_devices
from clup.pipeline import fingerprint
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
