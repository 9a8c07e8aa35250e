"""`clup benchmark GRID.yaml`: methods x setups x seeds, one table.

A grid file names its setups (experiment files), its methods (settings applied
on top of a setup, such as `method: shot` or an ablation switch) and its seeds:

    name: benchmark-demo
    seeds: [0, 1, 2]
    setups: {studio->wild: demo.yaml}           # relative to the grid file
    methods:
      source only: {method: source_only}
      CluP: {}
      instance PL: {cluster_labeler.labels: instance, cluster_labeler.score: confidence}
    overrides: {source.head: shot}              # every run (optional)
    jobs: auto                                  # experiments at once (optional)

Every run is an ordinary experiment in `<output_root>/<name>/`. Runs of one
setup and seed share their source model, and their stage 1 and SwAV backbone when
those settings agree (the shared folders are named after a digest of the settings),
so a method costs only what is its own. `jobs` experiments run at once (`auto`: two on a
machine without GPUs, where all their stage processes share the CPU threads through one
pool, so no core idles while another run's stage could use it; one with GPUs; `clup
benchmark --jobs N` overrides it). An interrupted benchmark resumes: a
rerun finds the finished stages done. `benchmark.csv` (one row per run) and
`benchmark.md` (mean +- std over seeds, best per setup in bold) are rewritten
after every run.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from clup.config import ExperimentConfig, load_experiment
from clup.config.loader import parse_yaml
from clup.devices import visible_gpus
from clup.errors import ConfigError
from clup.io import write_text
from clup.registry import GRID_FILES, RUN_FILES, SOURCE, STAGE1, STAGE2
from clup.validators import VALIDATORS

GRID_KEYS = {"name", "seeds", "setups", "methods", "overrides", "output_root", "jobs"}
CPU_JOBS = 2
"""Experiments at once on a machine without GPUs: two kept both cores of the 2-core
machine busy in `make benchmark-demo` (docs/benchmarks.md, "The embedded benchmark's table")."""
RESULT_COLUMNS = ["target_accuracy", "source_on_target", "selected_accuracy", "num_selected",
                  "auc_purity", "auc_confidence", "auc_score", "train_accuracy",
                  *(f"train_{name}" for name in VALIDATORS), "knn_label_agreement",
                  "largest_class_share"]
"""Copied from each run's `results.json`; the last two only for the baselines that have them."""
COLUMNS = ["setup", "method", "seed", *RESULT_COLUMNS, "seconds", "run_dir"]


@dataclass(frozen=True)
class Grid:
    name: str
    seeds: list[int]
    setups: dict[str, Path]
    methods: dict[str, dict[str, Any]]
    overrides: dict[str, Any]
    output_root: Path
    jobs: int | None = None  # None: auto

    @property
    def folder(self) -> Path:
        return self.output_root / self.name


@dataclass(frozen=True)
class Run:
    setup: str
    method: str
    seed: int
    config: ExperimentConfig


def load_grid(path: Path) -> Grid:
    """Read and check a grid file; every setup must load with every method's settings."""
    if not path.is_file():
        raise ConfigError(f"benchmark grid {path} does not exist")
    try:
        raw = parse_yaml(path.read_text(), str(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with keys {sorted(GRID_KEYS)}")
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; accepted: {sorted(GRID_KEYS)}")
    for key in ("name", "seeds", "setups", "methods"):
        if not raw.get(key):
            raise ConfigError(f"{path}: `{key}` is required")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in raw["seeds"]):
        raise ConfigError(f"{path}: seeds must be a list of integers, got {raw['seeds']}")
    for key in ("setups", "methods"):
        if not isinstance(raw[key], dict):
            raise ConfigError(f"{path}: {key} must map labels to "
                              f"{'experiment files' if key == 'setups' else 'settings'}")
    methods = {str(k): dict(v or {}) for k, v in raw["methods"].items()}
    for key in ("setups", "methods"):
        _check_distinct_folders(path, key, [str(label) for label in raw[key]])
    jobs = raw.get("jobs", "auto")
    if jobs != "auto" and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ConfigError(f"{path}: jobs must be a positive integer or auto, got {jobs!r}")
    return Grid(
        name=_slug(str(raw["name"])),
        seeds=list(raw["seeds"]),
        setups={str(k): path.parent / str(v) for k, v in raw["setups"].items()},
        methods=methods,
        overrides=dict(raw.get("overrides") or {}),
        output_root=Path(raw.get("output_root", "lightning_logs")),
        jobs=None if jobs == "auto" else jobs,
    )


def plan_runs(grid: Grid) -> list[Run]:
    """Every run of the grid, configured; seed by seed, so a partial grid is a whole table."""
    return [Run(setup, method, seed, run_config(grid, setup, method, seed))
            for seed in grid.seeds for setup in grid.setups for method in grid.methods]


def run_config(grid: Grid, setup: str, method: str, seed: int) -> ExperimentConfig:
    """A setup's experiment with the grid's and the method's settings, named for the grid."""
    # W&B's console capture off: it costs each stage about 2 s (docs/scale.md).
    settings = {"wandb.console": "off", **grid.overrides, **grid.methods[method], "seed": seed,
                "name": f"{_slug(setup)}--{_slug(method)}--seed{seed}",
                "output_root": str(grid.folder), "wandb.group": f"{grid.name}/{setup}"}
    overrides = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    config = load_experiment(grid.setups[setup], overrides)
    # Shared folders named after the settings they depend on: methods that agree on the
    # source (or SwAV) settings share it, one that changes them gets its own. Not after
    # what the data hold, which is unknown until the grid renders them; a stage in a shared
    # folder still reruns when they change (its own fingerprint covers them).
    config.source.run_name = config.swav.run_name = config.cluster_labeler.run_name = None
    config.source.run_name = f"{_slug(setup)}--shared-source-{_digest(config, SOURCE)}"
    # Stage 1 after the source: its digest covers the source model it labels with.
    config.cluster_labeler.run_name = f"{_slug(setup)}--shared-stage1-{_digest(config, STAGE1)}"
    config.swav.run_name = f"{_slug(setup)}--shared-swav-{_digest(config, STAGE2)}"
    return config


def _digest(config: ExperimentConfig, name: str) -> str:
    from clup.pipeline import fingerprint

    return fingerprint(config, name, data=False)[:8]


def run_benchmark(path: Path, jobs: int | None = None) -> list[dict[str, Any]]:
    """Run (or resume) every run of the grid, `jobs` at once; write and return the rows."""
    from clup import driver
    from clup.data.datasets import prepare_dataset
    from clup.plan import datasets_used

    grid = load_grid(path)
    runs = plan_runs(grid)
    gpus = visible_gpus(runs[0].config)
    jobs = min(jobs or grid.jobs or (1 if gpus else CPU_JOBS), len(runs))
    # Datasets first, one at a time: runs starting together must not render one twice.
    for run in runs:
        for key, dataset in datasets_used(run.config):
            prepare_dataset(dataset, key)
    results: dict[int, dict[str, Any]] = {}
    if jobs == 1:
        for number, run in enumerate(runs):
            _announce(number, runs, "starting")
            results[number] = driver.run_experiment(run.config)
            write_outputs(grid, _rows(runs, results))
    else:
        _run_parallel(grid, runs, jobs, results)
    rows = _rows(runs, results)
    print(table(grid, rows))
    print(f"\n[clup benchmark] {grid.folder / GRID_FILES['rows']}, "
          f"{grid.folder / GRID_FILES['table']}")
    return rows


def _run_parallel(grid: Grid, runs: list[Run], jobs: int,
                  results: dict[int, dict[str, Any]]) -> None:
    """`jobs` runs at once in threads (each waits on its stage processes); on a failure or
    Ctrl-C no new run starts and the running ones are stopped."""
    from clup import driver

    pool = grid.folder / RUN_FILES["threads"]
    cancel = threading.Event()
    lock = threading.Lock()

    def work(number: int) -> None:
        if cancel.is_set():
            return
        run = runs[number]
        _announce(number, runs, "starting")
        tag = f"[{number + 1}/{len(runs)}]"
        outcome = driver.run_experiment(
            run.config, thread_pool=pool, quiet=True, cancel=cancel,
            echo=lambda text: _say("\n".join(f"{tag} {line}" if line.strip() else line
                                             for line in text.split("\n"))))
        with lock:
            results[number] = outcome
            write_outputs(grid, _rows(runs, results))
        accuracy = outcome["target_accuracy"]
        _announce(number, runs, "done, target accuracy "
                  + ("n/a" if accuracy is None else f"{100 * accuracy:.1f}%")
                  + f" ({len(results)} of {len(runs)} runs done)")

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="clup-run") as executor:
        futures = [executor.submit(work, number) for number in range(len(runs))]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            cancel.set()
            for future in futures:
                future.cancel()
            raise


_PRINT_LOCK = threading.Lock()


def _say(line: str) -> None:
    """One whole line at a time: the runner threads print at once."""
    with _PRINT_LOCK:
        print(line, flush=True)


def _announce(number: int, runs: list[Run], what: str) -> None:
    run = runs[number]
    _say(f"[clup benchmark] run {number + 1}/{len(runs)}: {run.setup}, {run.method}, "
         f"seed {run.seed}: {what}")


def _rows(runs: list[Run], results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished runs' rows, in the grid's order."""
    return [_row(runs[n], results[n]) for n in sorted(results)]


def _row(run: Run, results: dict[str, Any]) -> dict[str, Any]:
    return {
        "setup": run.setup, "method": run.method, "seed": run.seed,
        **{key: results.get(key) for key in RESULT_COLUMNS},
        "seconds": round(sum(results["seconds"].values()), 1),
        "run_dir": str(run.config.run_dir),
    }


def write_outputs(grid: Grid, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(grid.folder / GRID_FILES["rows"], buffer.getvalue())
    write_text(grid.folder / GRID_FILES["table"], table(grid, rows) + "\n")


def table(grid: Grid, rows: list[dict[str, Any]]) -> str:
    """Target accuracy (%), mean +- std over seeds; the best mean per setup in bold."""
    cells: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["target_accuracy"] is not None:
            cells.setdefault((row["method"], row["setup"]), []).append(100 * row["target_accuracy"])
    best = {setup: max((np.mean(v) for (_, s), v in cells.items() if s == setup), default=None)
            for setup in grid.setups}
    lines = ["| method | " + " | ".join(grid.setups) + " |",
             "|---|" + "---|" * len(grid.setups)]
    for method in grid.methods:
        entries = []
        for setup in grid.setups:
            values = cells.get((method, setup))
            if not values:
                entries.append("")
                continue
            text = f"{np.mean(values):.1f} ± {np.std(values):.1f} (n={len(values)})"
            entries.append(f"**{text}**" if np.mean(values) == best[setup] else text)
        lines.append(f"| {method} | " + " | ".join(entries) + " |")
    lines += ["", _ranking_note(rows)]
    return "\n".join(lines)


def _ranking_note(rows: list[dict[str, Any]]) -> str:
    """Stage 1's ranking quality, averaged over the runs that measured it."""
    parts = []
    for key, label in (("auc_purity", "cluster purity"), ("auc_confidence", "confidence")):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            parts.append(f"{label} {np.mean(values):.3f} ± {np.std(values):.3f}")
    if not parts:
        return ""
    return ("ROC AUC of the score for a correct stage-1 pseudo-label (mean ± std over runs): "
            + ", ".join(parts))


def _check_distinct_folders(path: Path, key: str, labels: list[str]) -> None:
    """Two labels naming one run folder would overwrite each other's runs (on a
    case-insensitive disk too): refuse them, naming both."""
    seen: dict[str, str] = {}
    for label in labels:
        folder = _slug(label).lower()
        if folder in seen:
            raise ConfigError(f"{path}: {key} {seen[folder]!r} and {label!r} would share the "
                              f"run folder {_slug(label)!r}; rename one")
        seen[folder] = label


def _slug(text: str) -> str:
    """A label as a folder name: `->` as `-to-`, `+` as `-plus`, other runs of characters
    outside letters, digits and `._-` as one `-`."""
    text = text.replace("->", "-to-").replace("+", "-plus")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    if not slug:
        raise ConfigError(f"{text!r} cannot name a folder")
    return slug

