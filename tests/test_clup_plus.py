"""`method: clup_plus`: CluP's stages with clup/recipes.py's defaults, which an experiment's
own settings override; a tiny run end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from clup.cli import main
from clup.clustering import features
from clup.config import dump_yaml, experiment_from_dict, load_experiment
from clup.pipeline import active_stages
from clup.recipes import CLUP_PLUS
from tests.conftest import tiny_experiment, write_experiment


def _recipe_values(config) -> dict[str, dict[str, object]]:
    return {section: {key: getattr(getattr(config, section), key) for key in values}
            for section, values in CLUP_PLUS.items()}


def test_clup_plus_takes_the_recipe_and_clup_keeps_the_reference(tmp_path: Path) -> None:
    plus = experiment_from_dict(tiny_experiment(tmp_path, method="clup_plus"))
    assert _recipe_values(plus) == CLUP_PLUS
    reference = experiment_from_dict(tiny_experiment(tmp_path))
    assert reference.cluster_labeler.score == "purity"
    assert reference.finetune.pseudo_labels == "selected"
    assert active_stages(plus) == active_stages(reference) == [
        "source", "stage1", "stage2", "stage3"]


def test_what_the_experiment_sets_wins_over_the_recipe(tmp_path: Path) -> None:
    raw = tiny_experiment(tmp_path, method="clup_plus")
    raw["finetune"]["pseudo_labels"] = "selected"
    config = experiment_from_dict(raw)
    assert config.finetune.pseudo_labels == "selected"
    assert config.finetune.epochs == 1  # the experiment's other keys stay too
    assert config.cluster_labeler.score == CLUP_PLUS["cluster_labeler"]["score"]
    # Overrides on the command line win as well.
    path = write_experiment(tmp_path / "plus.yaml", tiny_experiment(tmp_path, method="clup_plus"))
    overridden = load_experiment(path, ["cluster_labeler.score=confidence"])
    assert overridden.cluster_labeler.score == "confidence"


def test_the_written_config_reads_back_as_the_same_experiment(tmp_path: Path) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path, method="clup_plus"))
    again = experiment_from_dict(yaml.safe_load(dump_yaml(config)))
    assert again == config


def test_the_recipe_would_be_refused_if_a_key_were_wrong(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe goes through the schema's checks like any setting."""
    monkeypatch.setitem(CLUP_PLUS, "finetune", {"pseudo_label": "weighted"})
    from clup.errors import ConfigError

    with pytest.raises(ConfigError, match="pseudo_label"):
        experiment_from_dict(tiny_experiment(tmp_path, method="clup_plus"))


def test_a_tiny_clup_plus_run_trains_on_its_recipe(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    experiment = tiny_experiment(tmp_path, method="clup_plus")
    assert main(["run", str(write_experiment(tmp_path / "plus.yaml", experiment))]) == 0
    assert "CluP+ on target test" in capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    written = load_experiment(run_dir / "config.yaml")
    assert written.method == "clup_plus" and _recipe_values(written) == CLUP_PLUS
    rows = list(csv.DictReader((run_dir / "stage1/pseudo_labels.csv").open()))
    _, probs = features.load(run_dir / "stage1/features")
    # Its score: purity times the member's probability of its pseudo-label.
    expected = [float(r["purity"]) * probs[i, int(r["pseudo_label"])]
                for i, r in enumerate(rows)]
    assert np.allclose([float(r["score"]) for r in rows], expected)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "clup_plus" and results["target_accuracy"] is not None
    assert results["train_accuracy"] is not None
