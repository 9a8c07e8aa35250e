"""`clup benchmark` on a small grid: shared stages, the table, resuming after an interruption."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

import clup.driver
from clup.benchmark import load_grid, run_benchmark, table
from clup.errors import ConfigError
from tests.conftest import tiny_experiment, write_experiment


def _grid(tmp_path: Path) -> Path:
    experiment = tiny_experiment(tmp_path)
    experiment["swav"]["epochs"] = 1
    write_experiment(tmp_path / "tiny.yaml", experiment)
    grid = {
        "name": "grid",
        "seeds": [0, 1],
        "setups": {"studio->wild": "tiny.yaml"},
        "methods": {"source only": {"method": "source_only"}, "CluP": {}},
        "output_root": str(tmp_path / "bench"),
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_interrupted_benchmark_resumes_and_tabulates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _grid(tmp_path)
    real = clup.driver.run_experiment
    calls: list[str] = []

    def interrupted(config, **options):  # noqa: ANN001, ANN003, ANN202 - as run_experiment
        calls.append(config.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(config, **options)

    monkeypatch.setattr(clup.driver, "run_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(path, jobs=1)
    folder = tmp_path / "bench" / "grid"
    assert len(list(csv.DictReader((folder / "benchmark.csv").open()))) == 2
    finished = folder / "studio-to-wild--CluP--seed0" / "stage3" / "done.json"
    stamp = finished.stat().st_mtime_ns

    monkeypatch.setattr(clup.driver, "run_experiment", real)
    rows = run_benchmark(path, jobs=2)
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("source only", 0), ("CluP", 0), ("source only", 1), ("CluP", 1)]
    assert finished.stat().st_mtime_ns == stamp  # the finished run was not redone
    # The runs' stage processes shared one thread pool, left empty once they ended.
    assert (folder / ".threads").is_dir() and not list((folder / ".threads").iterdir())
    assert all(0 <= r["target_accuracy"] <= 1 for r in rows)
    # Both methods of a seed share one source model: one source folder per seed.
    assert len(list(folder.glob("studio-to-wild--shared-source-*"))) == 2
    assert len(list(folder.glob("studio-to-wild--shared-swav-*"))) == 2
    # Their stage 1 settings agree too: one stage 1 per seed, none in the run folders.
    assert len(list(folder.glob("studio-to-wild--shared-stage1-*/stage1/done.json"))) == 2
    assert not list(folder.glob("studio-to-wild--CluP--seed*/stage1"))
    source_only = [r for r in rows if r["method"] == "source only"]
    assert all(r["target_accuracy"] == r["source_on_target"] for r in source_only)
    text = (folder / "benchmark.md").read_text()
    assert "| method | studio->wild |" in text and "(n=2)" in text and "**" in text
    assert "ROC AUC of the score" in text


def test_table_marks_the_best_mean_per_setup(tmp_path: Path) -> None:
    grid = load_grid(_grid(tmp_path))
    rows = [{"setup": "studio->wild", "method": m, "seed": s, "target_accuracy": a}
            for m, s, a in [("source only", 0, 0.5), ("source only", 1, 0.7),
                            ("CluP", 0, 0.8), ("CluP", 1, 0.6)]]
    lines = table(grid, rows).splitlines()
    assert lines[2] == "| source only | 60.0 ± 10.0 (n=2) |"
    assert lines[3] == "| CluP | **70.0 ± 10.0 (n=2)** |"


def test_bad_grids_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("name: g\nseeds: [0]\nsetups: {a: x.yaml}\nmethod: {}\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['method'\]"):
        load_grid(path)
    path.write_text("name: g\nseeds: [zero]\nsetups: {a: x.yaml}\nmethods: {m: {}}\n")
    with pytest.raises(ConfigError, match="seeds must be a list of integers"):
        load_grid(path)
    # "CluP+" once became CluP's folder and overwrote its runs; "Tent"/"tent" share one on a
    # case-insensitive disk.
    for methods, pair in (("{CluP: {}, CluP+: {}, CluP plus: {}}", "'CluP\\+' and 'CluP plus'"),
                          ("{Tent: {}, tent: {}}", "'Tent' and 'tent'")):
        path.write_text(f"name: g\nseeds: [0]\nsetups: {{a: x.yaml}}\nmethods: {methods}\n")
        with pytest.raises(ConfigError, match=f"methods {pair} would share the run folder"):
            load_grid(path)


def test_labels_become_distinct_folder_names() -> None:
    from clup.benchmark import _slug

    assert _slug("studio->wild") == "studio-to-wild"
    assert _slug("CluP+") == "CluP-plus" != _slug("CluP")
    assert _slug("CluP, all images weighted") == "CluP-all-images-weighted"


def test_grid_stages_skip_wandbs_console_copy_unless_the_grid_asks(tmp_path: Path) -> None:
    from clup.benchmark import plan_runs
    from clup.stages.common import make_loggers

    grid = load_grid(_grid(tmp_path))
    run = plan_runs(grid)[0]
    assert run.config.wandb.console == "off"
    run.config.wandb.mode = "offline"
    wandb_logger = make_loggers(run.config, tmp_path / "stage", "source")[-1]
    assert wandb_logger._wandb_init["settings"].console == "off"
    kept = load_grid(_grid(tmp_path))
    kept.overrides["wandb.console"] = "auto"
    assert plan_runs(kept)[0].config.wandb.console == "auto"
