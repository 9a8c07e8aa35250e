"""The four paper setups on fake copies of the raw datasets: dry runs, missing data, make."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clup.cli import main
from tests.fake_raw import make_fake_afe, make_fake_expw, make_fake_fer2013, make_fake_rafdb

SETUPS = {
    "afe-expw": ("AFE", "ExpW"),
    "afe-fer2013": ("AFE", "FER2013"),
    "rafdb-expw": ("RAF-DB", "ExpW"),
    "rafdb-fer2013": ("RAF-DB", "FER2013"),
}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fakes big enough for the reference K (1000) on both targets."""
    root = tmp_path_factory.mktemp("data")
    make_fake_afe(root / "AFE")
    make_fake_rafdb(root / "RAF-DB")
    make_fake_expw(root / "ExpW", photos=400, faces_per_photo=4)
    make_fake_fer2013(root / "FER2013", per_label=150)
    return root


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path) -> Path:
    monkeypatch.setenv("CLUP_DATA_ROOT", str(data_root))
    monkeypatch.setenv("CLUP_PREPARED_ROOT", str(tmp_path / "prepared"))
    monkeypatch.setenv("CLUP_USER_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.chdir(REPO)
    return tmp_path


@pytest.mark.parametrize("setup", list(SETUPS))
def test_dry_run_checks_and_plans_each_setup(setup: str, env: Path, data_root: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    runs = env / "runs"
    code = main(["run", f"experiments/{setup}.yaml", "--dry-run", f"output_root={runs}"])
    out = capsys.readouterr().out
    assert code == 0, out
    source, target = SETUPS[setup]
    assert f"target       {target} at {data_root / target}" in out
    assert f"source.data  {source} at {data_root / source}" in out
    assert "not prepared yet" in out and "0 image files missing" in out
    assert f"{runs / setup}" in out
    assert f"{runs / ('source-' + setup.split('-')[0])}/source" in out
    assert out.count("will run") == 4
    assert "Dry run: nothing was trained." in out
    assert not runs.exists()
    assert not (env / "prepared").exists()


def test_dry_run_reads_a_prepared_target(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "fer2013", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["run", "experiments/afe-fer2013.yaml", "--dry-run",
                 f"output_root={env / 'runs'}"]) == 0
    assert "prepared, 1050 train, 1050 test" in capsys.readouterr().out


def test_too_few_target_images_for_k_is_caught_by_the_dry_run(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "experiments/afe-expw.yaml", "--dry-run",
                 "cluster_labeler.num_clusters=5000"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cluster_labeler.num_clusters is 5000, but the target has only" in err


def test_a_missing_dataset_stops_at_once_saying_what_and_where(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    empty = env / "empty-root"
    (empty / "AFE").mkdir(parents=True)
    monkeypatch.setenv("CLUP_DATA_ROOT", str(empty))
    code = main(["run", "experiments/afe-expw.yaml", f"output_root={env / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"ExpW was expected in {empty / 'ExpW'}, which does not exist" in err
    assert "image/origin" in err and "label/label.lst" in err
    assert "mmlab.ie.cuhk.edu.hk" in err and "CLUP_DATA_ROOT" in err
    assert not (env / "runs").exists()


def test_without_a_data_root_the_message_says_how_to_set_one(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CLUP_DATA_ROOT")
    assert main(["run", "experiments/rafdb-expw.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no data root is set: export CLUP_DATA_ROOT=" in err
    assert str(env / "absent.yaml") in err


@pytest.mark.parametrize(
    ("target", "command"),
    [(s, f"clup run experiments/{s}.yaml") for s in SETUPS]
    + [(s, f"clup train-source experiments/{s}.yaml") for s in ("source-afe", "source-rafdb")],
)
def test_make_targets_run_their_experiment(target: str, command: str) -> None:
    # `make -n` prints the commands without running them; ARGS reaches clup.
    result = subprocess.run(["make", "-n", "-W", "pyproject.toml", target, "ARGS=a.b=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"{command} a.b=1" in result.stdout
