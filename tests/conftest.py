"""Shared fixtures: a tiny experiment that runs end to end on 2 CPU cores in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


def tiny_experiment(root: Path, **sections: Any) -> dict[str, Any]:
    """An experiment on the embedded benchmark with tiny images, sizes and epochs."""
    data = root / "datasets"
    experiment: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "output_root": str(root / "runs"),
        "target": {"kind": "synthetic", "path": str(data / "wild"), "domain": "wild",
                   "train_size": 84, "test_size": 35},
        "source": {
            "data": {"kind": "synthetic", "path": str(data / "studio"), "domain": "studio",
                     "train_size": 84, "test_size": 35},
            "backbone": {"name": "small_cnn", "width": 4},
            "preprocessing": {"image_size": 16},
            "epochs": 1,
            "batch_size": 32,
        },
        "backbone": {"name": "small_cnn", "width": 4},
        "preprocessing": {"image_size": 16},
        "cluster_labeler": {"num_clusters": 10, "selection_ratio": 0.5},
        "swav": {"epochs": 2, "batch_size": 16, "n_prototypes": 10, "projection_hidden_dim": 16,
                 "projection_dim": 8, "n_local_crops": 2, "local_crop_size": 8},
        "finetune": {"epochs": 1, "batch_size": 8},
        "runtime": {"num_workers": 0, "accelerator": "cpu"},
        "wandb": {"mode": "disabled"},
    }
    for key, value in sections.items():
        experiment[key] = value
    return experiment


def write_experiment(path: Path, experiment: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    return write_experiment(tmp_path / "tiny.yaml", tiny_experiment(tmp_path))
