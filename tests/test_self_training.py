"""Stage 3's self-training rounds (`finetune.rounds`): the ratio schedule by hand, the
configuration and the fingerprint, and a tiny two-round stage 3, restarted."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from clup.config import experiment_from_dict
from clup.errors import ConfigError
from clup.io import read_json
from clup.models.checkpoint import load_classifier
from clup.pipeline import fingerprint, run_stage
from clup.registry import SELF_TRAINING_KEYS, STAGES, RunLayout, round_file, round_folder
from clup.stages.self_training import selection_ratios
from tests.conftest import tiny_experiment

# ---------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    ("first", "final", "rounds", "expected"),
    [(0.1, 0.5, 3, [0.1, 0.3, 0.5]), (0.1, 0.4, 4, [0.1, 0.2, 0.3, 0.4]),
     (0.2, 0.2, 2, [0.2, 0.2]), (0.3, 0.9, 2, [0.3, 0.9]), (0.1, 0.5, 1, [0.1])],
)
def test_the_ratio_grows_linearly_from_stage_1s_to_the_final_one(first, final, rounds,
                                                                  expected) -> None:
    ratios = selection_ratios(first, final, rounds)
    assert ratios == pytest.approx(expected, abs=1e-15)
    assert ratios[0] == first and (rounds == 1 or ratios[-1] == final)


@pytest.mark.parametrize("rounds", [0, -1, 2.0, True])
def test_the_schedule_refuses_a_round_count_that_is_not_a_positive_integer(rounds) -> None:
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        selection_ratios(0.1, 0.5, rounds)


# ---------------------------------------------------------------- configuration


def _config(tmp_path: Path, finetune: dict[str, Any] | None = None,
            cluster_labeler: dict[str, Any] | None = None):
    raw = tiny_experiment(tmp_path)
    raw["finetune"].update(finetune or {})
    raw["cluster_labeler"].update(cluster_labeler or {})
    return experiment_from_dict(raw)


def test_the_defaults_are_one_round_and_a_final_ratio_of_half(tmp_path) -> None:
    finetune = _config(tmp_path).finetune
    assert (finetune.rounds, finetune.final_selection_ratio) == (1, 0.5)


@pytest.mark.parametrize(
    ("finetune", "cluster_labeler", "message"),
    [
        ({"rounds": 0}, {}, "finetune.rounds must be positive, got 0"),
        ({"rounds": 1.5}, {}, "finetune.rounds"),
        ({"rounds": 2, "final_selection_ratio": 1.5}, {},
         "finetune.final_selection_ratio must be in (0, 1], got 1.5"),
        ({"final_selection_ratio": 0}, {}, "finetune.final_selection_ratio must be in (0, 1]"),
        ({"rounds": 2, "final_selection_ratio": 0.3}, {"selection_ratio": 0.5},
         "finetune.final_selection_ratio (0.3) must be at least "
         "cluster_labeler.selection_ratio (0.5)"),
        ({"rounds": 3}, {"purity_threshold": 0.8},
         "finetune.rounds > 1 grows cluster_labeler.selection_ratio, which "
         "cluster_labeler.purity_threshold replaces"),
    ],
)
def test_bad_values_are_refused_naming_the_keys(tmp_path, finetune, cluster_labeler,
                                                message) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, finetune, cluster_labeler)
    assert message in str(err.value)


def test_one_round_reads_no_final_ratio_and_equal_ratios_are_accepted(tmp_path) -> None:
    _config(tmp_path, {"final_selection_ratio": 0.2}, {"selection_ratio": 0.5})
    _config(tmp_path, {"rounds": 2, "final_selection_ratio": 0.5}, {"selection_ratio": 0.5})
    _config(tmp_path, {"final_selection_ratio": 0.2}, {"purity_threshold": 0.8})


def test_one_round_keeps_stage_3s_fingerprint_and_rounds_cover_stage_1s_settings(
        tmp_path) -> None:
    default, stage3 = _config(tmp_path), STAGES["stage3"]
    one_round = _config(tmp_path, {"rounds": 1, "final_selection_ratio": 0.9})
    assert fingerprint(one_round, "stage3", data=False) == fingerprint(default, "stage3",
                                                                       data=False)
    # The payload of runs made before the switch: no self-training key, no stage-1 section.
    settings = stage3.settings(default)
    assert "cluster_labeler" not in settings
    assert not set(SELF_TRAINING_KEYS) & set(settings["finetune"])
    two = _config(tmp_path, {"rounds": 2})
    assert fingerprint(two, "stage3", data=False) != fingerprint(default, "stage3", data=False)
    assert stage3.settings(two)["finetune"]["rounds"] == 2
    # A stage-1 setting that leaves stage 1's table as it is still reshapes later rounds.
    larger_batches = _config(tmp_path, {"rounds": 2}, {"batch_size": 64})
    assert stage3.settings(larger_batches) != stage3.settings(two)
    assert stage3.settings(_config(tmp_path, cluster_labeler={"batch_size": 64})) == settings


# ---------------------------------------------------------------- a tiny stage 3


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("self-training")


def _experiment(root: Path, name: str, **finetune: Any):
    """Stage 3 from the source model's backbone (no SwAV run), the source model and stage 1
    shared by every experiment here."""
    raw = tiny_experiment(root, name=name)
    raw["source"]["run_name"] = "source"
    raw["cluster_labeler"]["run_name"] = "stage1"
    raw["finetune"].update({"init": "source", **finetune})
    config = experiment_from_dict(raw)
    for stage in ("source", "stage1"):
        run_stage(config, config.run_dir, stage)
    return config, RunLayout(config, config.run_dir)


def _rows(table: Path) -> list[dict[str, str]]:
    with table.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_one_round_writes_no_round_folder_nor_rounds(shared_root: Path) -> None:
    config, layout = _experiment(shared_root, "one-round")
    run_stage(config, config.run_dir, "stage3")
    folder = layout.stage_dir("stage3")
    assert not round_folder(folder, 1).exists()
    assert "rounds" not in read_json(layout.artifact("stage3", "metrics"))


def test_two_rounds_relabel_with_the_grown_ratio_and_a_restart_skips_finished_rounds(
        shared_root: Path) -> None:
    config, layout = _experiment(shared_root, "two-rounds", rounds=2,
                                 final_selection_ratio=0.8)
    run_stage(config, config.run_dir, "stage3")
    folder = layout.stage_dir("stage3")
    metrics = read_json(layout.artifact("stage3", "metrics"))
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert [r["selection_ratio"] for r in metrics["rounds"]] == pytest.approx([0.5, 0.8])
    assert 0 <= metrics["accuracy"] <= 1 and "train_split" in metrics

    # Round 1 trained on stage 1's table; round 2 on its own, in stage 1's format.
    stage1 = _rows(layout.artifact("stage1", "pseudo_labels"))
    rows = _rows(round_file(folder, 2, "pseudo_labels"))
    assert list(rows[0]) == list(stage1[0]) and len(rows) == len(stage1)
    for entry, table in zip(metrics["rounds"], (stage1, rows), strict=True):
        selected = [row for row in table if row["selected"] == "1"]
        per_class: dict[str, int] = {}
        for row in table:
            per_class[row["pseudo_label"]] = per_class.get(row["pseudo_label"], 0) + 1
        expected = sum(math.floor(entry["selection_ratio"] * n + 1e-9)
                       for n in per_class.values())
        assert entry["num_selected"] == len(selected) == expected
        right = sum(row["pseudo_label"] == row["true_label"] for row in selected)
        assert entry["selected_accuracy"] == pytest.approx(right / len(selected))
    # Per class, round 2 kept the best-scored images.
    for label in {row["pseudo_label"] for row in rows}:
        kept, left = ([float(row["score"]) for row in rows
                       if row["pseudo_label"] == label and row["selected"] == chosen]
                      for chosen in ("1", "0"))
        if kept and left:
            assert min(kept) >= max(left)
    summary = read_json(round_file(folder, 2, "summary"))
    assert (summary["round"], summary["num_selected"]) == (2, metrics["rounds"][1]["num_selected"])
    assert not round_file(folder, 2, "feature_cache").exists()

    # Round 2 went on training the round-1 model, and the final model is round 2's.
    first = load_classifier(round_file(folder, 1, "model")).model.state_dict()
    second = load_classifier(round_file(folder, 2, "model")).model.state_dict()
    final = load_classifier(layout.artifact("stage3", "model")).model.state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(second[k], final[k]) for k in second)

    # Restarted with both rounds finished: nothing is trained or relabelled again.
    kept = [round_file(folder, 1, "model"), round_file(folder, 2, "model"),
            round_file(folder, 2, "pseudo_labels")]
    times = [path.stat().st_mtime_ns for path in kept]
    layout.artifact("stage3", "done").unlink()
    layout.artifact("stage3", "model").unlink()
    run_stage(config, config.run_dir, "stage3")
    assert [path.stat().st_mtime_ns for path in kept] == times
    assert read_json(layout.artifact("stage3", "metrics"))["rounds"] == metrics["rounds"]
    assert all(torch.equal(second[k], v) for k, v in
               load_classifier(layout.artifact("stage3", "model")).model.state_dict().items())

    # Stopped during round 2: round 1 and round 2's table are kept, round 2 trains again.
    round_file(folder, 2, "model").unlink()
    layout.artifact("stage3", "done").unlink()
    run_stage(config, config.run_dir, "stage3")
    assert [path.stat().st_mtime_ns for path in kept[::2]] == times[::2]
    assert round_file(folder, 2, "model").is_file()
    assert len(read_json(layout.artifact("stage3", "metrics"))["rounds"]) == 2


@pytest.mark.parametrize("finetune", [{"pseudo_labels": "weighted"},
                                      {"unlabelled_loss": "im", "unlabelled_weight": 0.5}],
                         ids=["weighted", "im"])
def test_every_round_trains_with_stage_3s_switches(shared_root: Path,
                                                   finetune: dict[str, Any]) -> None:
    config, layout = _experiment(shared_root, f"two-rounds-{next(iter(finetune.values()))}",
                                 rounds=2, final_selection_ratio=0.7, **finetune)
    run_stage(config, config.run_dir, "stage3")
    metrics = read_json(layout.artifact("stage3", "metrics"))
    assert len(metrics["rounds"]) == 2 and 0 <= metrics["accuracy"] <= 1
    trained = load_classifier(layout.artifact("stage3", "model")).model
    assert all(torch.isfinite(p).all() for p in trained.parameters())
