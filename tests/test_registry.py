"""The stage registry is the one place that names stages' folders and files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import clup
from clup.config import experiment_from_dict
from clup.errors import ConfigError
from clup.registry import (
    GRID_FILES,
    RUN_FILES,
    STAGE_FILES,
    STAGES,
    RunLayout,
    stage_file,
)
from tests.conftest import tiny_experiment

PACKAGE = Path(clup.__file__).parent
OWNER = PACKAGE / "registry.py"


def _names() -> set[str]:
    """Every stage name and every file or folder name the registry declares."""
    names = set(STAGES) | set(STAGE_FILES.values()) | set(RUN_FILES.values()) \
        | set(GRID_FILES.values())
    for stage in STAGES.values():
        names |= set(stage.outputs.values())
    return names


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    # Docstrings, attributes' docstrings included: every string that is a statement alone.
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


ALLOWED = {
    # `finetune.init: source`, a value of the setting, not the stage.
    ("clup/config.py", "source"), ("clup/config/finetune.py", "source"),
    ("clup/stages/pseudo_label_finetuner.py", "source"),
    # Part of f"{key}.threads", the setting runtime.threads in an error message.
    ("clup/config.py", ".threads"), ("clup/config/runtime.py", ".threads"),
    # The written digits' record names its source dataset.
    ("clup/data/digits.py", "source"),
    # A prepared dataset's own files, not a stage's.
    ("clup/data/prepare.py", "prepare.started.json"), ("clup/data/prepare.py", ".lock"),
    # The user's settings file, ~/.config/clup/config.yaml.
    ("clup/paths.py", "config.yaml"),
    # Array names: the feature shards of the cache, an argument checked by a loss.
    ("clup/clustering/features.py", "features"), ("clup/losses/sfda.py", "features"),
}


def test_no_module_but_the_registry_spells_a_stage_folder_or_file() -> None:
    """No code string of clup/ (docstrings aside) is a stage's name or a declared file's,
    nor contains a declared file name or a path into a stage folder."""
    names = _names()
    files = {name for name in names if "." in name}
    folders = {f"{name}/" for name in STAGES}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == OWNER:
            continue
        where = str(path.relative_to(PACKAGE.parent))
        for line, text in _code_strings(path):
            if (where, text) in ALLOWED:
                continue
            if text in names or any(f in text for f in files | folders):
                found.append(f"{where}:{line}: {text!r}")
    assert not found, "\n".join(found)


def test_slurm_stage_entries_take_every_stage_and_only_those(tmp_path: Path) -> None:
    raw = tiny_experiment(tmp_path)
    raw["slurm"] = {"stages": {name: {"nodes": 2} for name in STAGES}}
    assert set(experiment_from_dict(raw).slurm.stages) == set(STAGES)
    raw["slurm"]["stages"]["stage9"] = {"nodes": 2}
    with pytest.raises(ConfigError, match="unknown key slurm.stages.stage9"):
        experiment_from_dict(raw)


def test_the_layout_resolves_declared_files_and_shared_folders(tmp_path: Path) -> None:
    raw = tiny_experiment(tmp_path)
    raw["cluster_labeler"]["run_name"] = "shared-one"
    config = experiment_from_dict(raw)
    layout = RunLayout(config, config.run_dir)
    assert layout.stage_dir("stage3") == config.run_dir / "stage3"
    assert layout.stage_dir("stage1") == Path(config.output_root) / "shared-one" / "stage1"
    assert layout.artifact("stage1", "pseudo_labels").name == "pseudo_labels.csv"
    assert layout.artifact("stage3", "done") == config.run_dir / "stage3" / "done.json"
    # Stage 3 reads stage 1's table wherever stage 1 lives.
    assert layout.paths("stage3").input("pseudo_labels") == layout.artifact("stage1",
                                                                           "pseudo_labels")
    with pytest.raises(KeyError, match="declares no input 'summary'"):
        layout.paths("stage3").input("summary")
    with pytest.raises(KeyError, match="declares no file 'backbone'"):
        layout.artifact("stage1", "backbone")
    assert stage_file(tmp_path, "resume") == tmp_path / "checkpoints" / "last.ckpt"


def test_every_declared_input_is_another_stages_declared_output() -> None:
    for stage in STAGES.values():
        for source, artifact in stage.inputs.values():
            assert source != stage.name and artifact in STAGES[source].outputs
