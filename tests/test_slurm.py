"""`clup run --launcher slurm` with fake `sbatch` and `squeue`: scripts, chaining, reruns."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from clup.cli import main
from clup.config import load_experiment
from clup.errors import ConfigError
from clup.io import write_json
from clup.pipeline import fingerprint
from clup.registry import stage_dir
from clup.slurm.launcher import sbatch_scripts, stage_resources
from tests.conftest import tiny_experiment, write_experiment
from tests.fake_raw import make_fake_afe, make_fake_expw

REPO = Path(__file__).resolve().parent.parent

FAKE_SBATCH = """#!{python}
import json, os, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
count = state / "count"
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
with (state / "sbatch.log").open("a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "script": Path(sys.argv[-1]).read_text()}})
              + "\\n")
if str(n) == os.environ.get("FAKE_SBATCH_FAIL_AT"):
    print("sbatch: error: invalid partition specified: nope", file=sys.stderr)
    sys.exit(1)
print(f"{{1000 + n}}{{os.environ.get('FAKE_SBATCH_SUFFIX', '')}}")
"""

FAKE_SQUEUE = """#!{python}
import json, os, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
with (state / "squeue.log").open("a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
listed = os.environ.get("FAKE_SQUEUE_IDS")
if listed is None:
    print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
    sys.exit(1)
print("\\n".join(listed.split(",")))
"""

SLURM = {
    "partition": "gpu", "account": "proj", "qos": "normal", "time": "12:00:00",
    "gpus_per_node": 4, "cpus_per_task": 6, "mem": "64G",
    "extra": ["--constraint=a100"], "setup": ["module load cuda"],
    "stages": {"stage2": {"nodes": 2, "time": "2-00:00:00", "extra": ["--exclusive"]}},
}


@pytest.fixture
def slurm_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on PATH with fake sbatch and squeue; their logs go to `<it>/state`."""
    folder = tmp_path / "bin"
    state = folder / "state"
    state.mkdir(parents=True)
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        (folder / name).write_text(text.format(python=sys.executable))
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{Path(sys.executable).parent}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.delenv("FAKE_SQUEUE_IDS", raising=False)
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    raw = tiny_experiment(tmp_path, slurm=SLURM)
    raw["runtime"]["accelerator"] = "auto"
    return write_experiment(tmp_path / "tiny.yaml", raw)


def sbatch_calls(slurm_bin: Path) -> list[dict[str, Any]]:
    log = slurm_bin / "state" / "sbatch.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def sbatch_options(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines()
            if line.startswith("#SBATCH ")]


def dependency(call: dict[str, Any]) -> str | None:
    found = [a for a in call["argv"] if a.startswith("--dependency=")]
    return found[0].removeprefix("--dependency=") if found else None


def mark_done(experiment: Path, name: str) -> None:
    config = load_experiment(experiment)
    folder = stage_dir(config, config.run_dir, name)
    write_json(folder / "done.json", {"fingerprint": fingerprint(config, name), "seconds": 1.0,
                                      "result": {}})


def test_scripts_carry_the_slurm_settings(experiment: Path, tmp_path: Path) -> None:
    config = load_experiment(experiment)
    scripts = sbatch_scripts(config, config.run_dir, tmp_path, "clup run --launcher slurm x")
    assert list(scripts) == ["source", "stage1", "stage2", "stage3"]
    run_dir = tmp_path / "runs" / "tiny"
    for name, script in scripts.items():
        options = sbatch_options(script)
        for expected in ("--partition=gpu", "--account=proj", "--qos=normal", "--mem=64G",
                         "--cpus-per-task=6", "--constraint=a100", "--requeue",
                         "--signal=SIGUSR1@90", "--open-mode=append",
                         f"--job-name=clup-tiny-{name}",
                         f"--output={run_dir}/slurm/{name}-%j.out",
                         f"--error={run_dir}/slurm/{name}-%j.out"):
            assert expected in options, (name, expected)
        assert script.startswith("#!/bin/bash\n# clup: ")
        assert "set -euo pipefail" in script
        assert f"\ncd {tmp_path}\n" in script
        assert script.index("module load cuda") < script.index("srun ")
        assert (f"srun --cpus-per-task=6 {sys.executable} -m clup.cli stage {name} {run_dir}"
                in script)
        assert ("-m clup.cli results --if-done" in script) == (name == "stage3")
    stage1, stage2, stage3 = (sbatch_options(scripts[n]) for n in ("stage1", "stage2", "stage3"))
    assert {"--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1", "--time=12:00:00"} \
        <= set(stage1)
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=2-00:00:00",
            "--exclusive"} <= set(stage2)
    assert "--exclusive" not in stage3 and "--nodes=1" in stage3
    assert "export CLUP_DEVICES=4 CLUP_NUM_NODES=2 CLUP_THREADS=6" in scripts["stage2"]
    assert "export CLUP_DEVICES=1 CLUP_NUM_NODES=1 CLUP_THREADS=6" in scripts["stage1"]
    assert "Waits for: the stage1 and stage2 jobs" in scripts["stage3"]


def test_a_cpu_job_asks_for_no_gpu_and_runs_one_process_per_node(tmp_path: Path) -> None:
    raw = tiny_experiment(tmp_path, slurm={"gpus_per_node": 0, "python": "python",
                                           "stages": {"stage2": {"nodes": 2}}})
    config = load_experiment(write_experiment(tmp_path / "cpu.yaml", raw))
    scripts = sbatch_scripts(config, config.run_dir, tmp_path)
    assert not any("--gpus-per-node" in line for s in scripts.values() for line in
                   sbatch_options(s))
    assert "--ntasks-per-node=1" in sbatch_options(scripts["stage2"])
    assert "export CLUP_DEVICES=1 CLUP_NUM_NODES=2" in scripts["stage2"]
    assert "srun --cpus-per-task=8 python -m clup.cli stage stage2" in scripts["stage2"]
    assert "--partition" not in scripts["stage2"] and "--account" not in scripts["stage2"]


def test_a_baseline_writes_its_results_from_both_concurrent_jobs(tmp_path: Path) -> None:
    raw = tiny_experiment(tmp_path, method="tent", slurm={"gpus_per_node": 0})
    config = load_experiment(write_experiment(tmp_path / "tent.yaml", raw))
    scripts = sbatch_scripts(config, config.run_dir, tmp_path)
    assert list(scripts) == ["source", "stage1", "adapt"]
    assert all(("results --if-done" in scripts[n]) == (n != "source") for n in scripts)


def test_submit_chains_the_jobs(experiment: Path, slurm_bin: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 0
    out = capsys.readouterr().out
    calls = sbatch_calls(slurm_bin)
    run_dir = tmp_path / "runs" / "tiny"
    assert [c["argv"][-1] for c in calls] == [str(run_dir / "slurm" / f"{n}.sbatch")
                                             for n in ("source", "stage1", "stage2", "stage3")]
    assert all(c["argv"][0] == "--parsable" for c in calls)
    assert [dependency(c) for c in calls] == [None, "afterok:1001", None, "afterok:1002:1003"]
    assert "--kill-on-invalid-dep=yes" in calls[3]["argv"]
    assert "--kill-on-invalid-dep=yes" not in calls[2]["argv"]
    assert "#SBATCH --nodes=2" in calls[2]["script"]
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    assert {n: r["job_id"] for n, r in jobs["jobs"].items()} == {
        "source": "1001", "stage1": "1002", "stage2": "1003", "stage3": "1004"}
    assert jobs["jobs"]["stage3"]["after"] == ["stage1", "stage2"]
    assert jobs["jobs"]["stage1"]["script"] == str(run_dir / "slurm" / "stage1.sbatch")
    assert load_experiment(run_dir / "config.yaml") == load_experiment(experiment)
    assert "squeue -j 1001,1002,1003,1004" in out
    assert f"{run_dir}/slurm/<stage>-<job id>.out" in out


def test_a_cluster_suffix_is_kept_out_of_the_dependencies(
        experiment: Path, slurm_bin: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_SBATCH_SUFFIX", ";alpha")
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 0
    assert [dependency(c) for c in sbatch_calls(slurm_bin)][3] == "afterok:1002:1003"
    assert "squeue -j 1001,1002,1003,1004 --clusters=alpha" in capsys.readouterr().out
    jobs = json.loads((experiment.parent / "runs/tiny/slurm/jobs.json").read_text())["jobs"]
    assert jobs["stage1"] == {**jobs["stage1"], "job_id": "1002", "cluster": "alpha"}


def test_a_rerun_submits_only_the_unfinished_stages(experiment: Path, slurm_bin: Path) -> None:
    mark_done(experiment, "source")
    mark_done(experiment, "stage2")
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 0
    calls = sbatch_calls(slurm_bin)
    assert [Path(c["argv"][-1]).stem for c in calls] == ["stage1", "stage3"]
    assert [dependency(c) for c in calls] == [None, "afterok:1001"]


def test_a_rerun_waits_for_the_previous_jobs(experiment: Path, slurm_bin: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 0
    monkeypatch.setenv("FAKE_SQUEUE_IDS", "1003,1004")
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "jobs 1003 (stage2), 1004 (stage3) of the previous submission" in err
    assert "scancel 1003 1004" in err
    assert len(sbatch_calls(slurm_bin)) == 4
    monkeypatch.setenv("FAKE_SQUEUE_IDS", "")
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 0
    monkeypatch.delenv("FAKE_SQUEUE_IDS")  # squeue fails on forgotten ids: none is queued
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 0
    assert len(sbatch_calls(slurm_bin)) == 12


def test_dry_run_prints_the_scripts_and_writes_nothing(
        experiment: Path, slurm_bin: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--launcher", "slurm", str(experiment), "--dry-run",
                 "slurm.partition=short"]) == 0
    out = capsys.readouterr().out
    slurm = tmp_path / "runs" / "tiny" / "slurm"
    assert f"==> {slurm / 'stage3.sbatch'} would be written and submitted with" in out
    assert (f"sbatch --parsable --dependency=afterok:<stage1 job>:<stage2 job> "
            f"--kill-on-invalid-dep=yes {slurm / 'stage3.sbatch'}") in out
    assert f"sbatch --parsable {slurm / 'stage2.sbatch'}" in out
    assert out.count("#SBATCH --partition=short") == 4
    assert "# Written by `clup run --launcher slurm " in out
    assert "Dry run: nothing was written or submitted." in out
    assert not (tmp_path / "runs").exists()
    assert sbatch_calls(slurm_bin) == []


def test_without_sbatch_it_says_so_and_writes_nothing(
        experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_refused_job_shows_what_sbatch_said(experiment: Path, slurm_bin: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_SBATCH_FAIL_AT", "1")
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "sbatch refused" in err and "source.sbatch (exit code 1)" in err
    assert "invalid partition specified: nope" in err and "Submitted before" not in err


def test_a_failure_part_way_says_what_was_submitted(
        experiment: Path, slurm_bin: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_SBATCH_FAIL_AT", "3")
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "Submitted before it: source, stage1 (jobs 1001 1002" in err
    assert "scancel 1001 1002" in err
    jobs = json.loads((experiment.parent / "runs/tiny/slurm/jobs.json").read_text())["jobs"]
    assert list(jobs) == ["source", "stage1"]


def test_gpus_asked_of_a_cpu_run_are_refused(experiment: Path, slurm_bin: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--launcher", "slurm", str(experiment), "runtime.accelerator=cpu"]) == 2
    assert "set slurm.gpus_per_node=0" in capsys.readouterr().err
    assert sbatch_calls(slurm_bin) == []


def fake_finished_run(experiment: Path) -> Path:
    config = load_experiment(experiment)
    run_dir = config.run_dir
    write_json(run_dir / "stage1" / "summary.json", {"num_selected": 40, "num_samples": 84})
    write_json(run_dir / "stage1" / "source_on_target.json", {"accuracy": 0.5})
    write_json(run_dir / "source" / "metrics.json", {"accuracy": 0.9})
    write_json(run_dir / "stage3" / "metrics.json", {"accuracy": 0.75})
    (run_dir / "config.yaml").write_text(experiment.read_text())
    for name in ("source", "stage1", "stage2", "stage3"):
        mark_done(experiment, name)
    return run_dir


def test_results_wait_for_every_stage(experiment: Path, slurm_bin: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = fake_finished_run(experiment)
    (run_dir / "stage3" / "done.json").unlink()
    assert main(["results", str(run_dir), "--if-done"]) == 0
    assert "results wait for: stage 3, PseudoLabelFinetuner" in capsys.readouterr().out
    assert main(["results", str(run_dir)]) == 2
    assert "not done yet: stage 3" in capsys.readouterr().err
    assert not (run_dir / "results.json").exists()


def test_results_of_a_finished_run(experiment: Path, slurm_bin: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = fake_finished_run(experiment)
    assert main(["results", str(run_dir)]) == 0
    assert "+25.0 points" in capsys.readouterr().out
    assert json.loads((run_dir / "results.json").read_text())["target_accuracy"] == 0.75
    (run_dir / "results.json").unlink()
    assert main(["run", "--launcher", "slurm", str(experiment)]) == 0  # nothing to submit
    assert "+25.0 points" in capsys.readouterr().out
    assert (run_dir / "results.json").is_file() and sbatch_calls(slurm_bin) == []


def test_stage_overrides_apply_to_their_stage_only(tiny_yaml: Path) -> None:
    config = load_experiment(tiny_yaml, ["slurm.stages.stage2.nodes=3", "slurm.nodes=1"])
    assert stage_resources(config, "stage2").nodes == 3
    assert stage_resources(config, "stage3").nodes == 1


@pytest.mark.parametrize("time", ["90", "90:30", "12:00:00", "02:00:00", "2-12", "2-12:30",
                                  "2-12:30:00"])
def test_slurm_time_formats_accepted(tiny_yaml: Path, time: str) -> None:
    assert load_experiment(tiny_yaml, [f"slurm.time='{time}'"]).slurm.time == time


@pytest.mark.parametrize(("override", "message"), [
    ("slurm.time=24:00:00", "slurm.time must be quoted"),
    ("slurm.time=1 day", "slurm.time must be a SLURM time limit"),
    ("slurm.stages.stage2.time=2-", "slurm.stages.stage2.time must be a SLURM time limit"),
    ("slurm.stages.stage4.nodes=2", "unknown key slurm.stages.stage4 (did you mean "
                                    "slurm.stages.stage3?)"),
    ("slurm.nodes=0", "slurm.nodes must be positive"),
    ("slurm.gpus_per_node=-1", "slurm.gpus_per_node must be >= 0"),
    ("slurm.mem=lots", "slurm.mem must be a size"),
    ("slurm.extra=[constraint=a100]", "slurm.extra[0] must be one sbatch option"),
    ("slurm.partition=''", "slurm.partition must be a name or null"),
])
def test_bad_slurm_settings_name_the_key(tiny_yaml: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(tiny_yaml, [override])
    assert message in str(caught.value)


def test_dry_run_of_a_paper_setup_on_fake_raw_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    make_fake_afe(data / "AFE")
    make_fake_expw(data / "ExpW")
    monkeypatch.setenv("CLUP_DATA_ROOT", str(data))
    monkeypatch.setenv("CLUP_PREPARED_ROOT", str(tmp_path / "prepared"))
    monkeypatch.setenv("CLUP_USER_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    monkeypatch.chdir(REPO)
    runs = tmp_path / "runs"
    assert main(["run", "--launcher", "slurm", "--dry-run", "experiments/afe-expw.yaml",
                 f"output_root={runs}"]) == 0
    out = capsys.readouterr().out
    assert out.count(" SLURM job ") == 4
    assert f"{runs}/source-afe/source" in out and f"{runs}/swav-expw/stage2" in out
    assert "#SBATCH --time=2-00:00:00" in out and "#SBATCH --time=04:00:00" in out
    assert f"export CLUP_DATA_ROOT={data}" in out
    assert f"-m clup.cli stage stage2 {runs}/afe-expw" in out
    assert not runs.exists() and not (tmp_path / "prepared").exists()
