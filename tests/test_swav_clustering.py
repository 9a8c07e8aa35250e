"""`cluster_labeler.features: swav`: stage 1 clusters stage 2's SwAV features, the source
model still voting; a changed stage order read from the registry everywhere."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from clup.cli import main
from clup.clustering import cluster_pseudo_labels, features
from clup.config import BackboneConfig, experiment_from_dict
from clup.devices import plan_devices
from clup.driver import stage_order
from clup.errors import ConfigError
from clup.models.backbones import build_backbone
from clup.pipeline import active_stages, fingerprint, running_alone
from clup.registry import STAGES
from clup.slurm.launcher import final_stages, pending_stages, waits_for
from tests.conftest import tiny_experiment, write_experiment


def _config(tmp_path: Path, **cluster_labeler: object):
    raw = tiny_experiment(tmp_path)
    raw["cluster_labeler"].update(cluster_labeler)
    return experiment_from_dict(raw)


def test_swav_features_put_stage1_after_stage2_for_the_driver_and_slurm(tmp_path: Path) -> None:
    config = _config(tmp_path, features="swav")
    assert stage_order(config, [])["stage1"] == ("source", "stage2")
    assert running_alone(config) == ["stage1", "stage2"]
    pending = pending_stages(config, config.run_dir)
    assert pending.index("stage2") < pending.index("stage1")
    assert waits_for(config, "stage1", pending) == ["source", "stage2"]
    assert final_stages(config) == ["stage3"]
    default = _config(tmp_path)
    assert stage_order(default, [])["stage1"] == ("source",) and running_alone(default) == []


def test_stages_run_one_after_another_get_every_gpu(tmp_path: Path) -> None:
    gpus = ["0", "1", "2"]
    together = plan_devices(gpus, 12)
    assert together["stage1"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert together["stage2"]["CUDA_VISIBLE_DEVICES"] == "1,2"
    alone = plan_devices(gpus, 12, alone=running_alone(_config(tmp_path, features="swav")))
    assert alone["stage1"]["CUDA_VISIBLE_DEVICES"] == alone["stage2"]["CUDA_VISIBLE_DEVICES"] \
        == "0,1,2"
    assert alone["stage1"]["CLUP_THREADS"] == "12"


def test_the_default_leaves_stage1s_fingerprint_as_it_was(tmp_path: Path) -> None:
    """Runs made before the switch existed stay done: the default is left out."""
    default, swav = _config(tmp_path), _config(tmp_path, features="swav")
    assert "features" not in STAGES["stage1"].settings(default)["cluster_labeler"]
    assert STAGES["stage1"].settings(swav)["cluster_labeler"]["features"] == "swav"
    assert fingerprint(default, "stage1", data=False) != fingerprint(swav, "stage1", data=False)
    # Stage 2's fingerprint is upstream of stage 1's only with swav features.
    changed = _config(tmp_path, features="swav")
    changed.swav.epochs = 3
    assert fingerprint(changed, "stage1", data=False) != fingerprint(swav, "stage1", data=False)
    plain = _config(tmp_path)
    plain.swav.epochs = 3
    assert fingerprint(plain, "stage1", data=False) == fingerprint(default, "stage1", data=False)


def test_swav_features_need_swav_itself(tmp_path: Path) -> None:
    raw = tiny_experiment(tmp_path, method="tent")
    raw["cluster_labeler"]["features"] = "swav"
    with pytest.raises(ConfigError, match="cluster_labeler.features: swav"):
        experiment_from_dict(raw)
    raw = tiny_experiment(tmp_path)
    raw["cluster_labeler"]["features"] = "pixels"
    with pytest.raises(ConfigError, match="cluster_labeler.features"):
        experiment_from_dict(raw)


def test_a_source_initialised_stage3_still_trains_swav_for_stage1(tmp_path: Path) -> None:
    raw = tiny_experiment(tmp_path)
    raw["cluster_labeler"]["features"] = "swav"
    raw["finetune"]["init"] = "source"
    assert "stage2" in active_stages(experiment_from_dict(raw))


def test_stage1_clusters_the_swav_features_and_votes_with_the_source_model(
        tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["cluster_labeler"]["features"] = "swav"
    assert main(["run", str(write_experiment(tmp_path / "swav.yaml", experiment))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    started = json.loads((run_dir / "stage1/started.json").read_text())["since"]
    assert (run_dir / "stage2/done.json").stat().st_mtime <= started
    swav_embeddings, unused = features.load(run_dir / "stage1/swav_features")
    source_embeddings, probs = features.load(run_dir / "stage1/features")
    width = build_backbone(BackboneConfig(name="small_cnn", width=4)).out_dim
    assert swav_embeddings.shape == source_embeddings.shape == (84, width + 1)  # + append_one
    assert np.allclose(unused, 1 / 7) and not np.allclose(swav_embeddings, source_embeddings)
    expected = cluster_pseudo_labels(swav_embeddings, probs, num_clusters=10,
                                     selection_ratio=0.5, seed=0)
    rows = list(csv.DictReader((run_dir / "stage1/pseudo_labels.csv").open()))
    assert [int(r["cluster"]) for r in rows] == expected.cluster.tolist()
    assert [int(r["pseudo_label"]) for r in rows] == expected.pseudo_label.tolist()
    assert [int(r["source_pred"]) for r in rows] == np.argmax(probs, axis=1).tolist()
    assert json.loads((run_dir / "results.json").read_text())["target_accuracy"] is not None
