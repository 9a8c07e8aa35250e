from pathlib import Path

import pytest
import torch

from clup.config import BackboneConfig, PreprocessingConfig
from clup.errors import CheckpointError
from clup.models.backbones import build_backbone
from clup.models.checkpoint import (
    Classifier,
    load_backbone,
    load_classifier,
    save_backbone,
    save_classifier,
)

CLASSES = ["a", "b", "c"]


def _classifier(config: BackboneConfig) -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_backbone(config), len(CLASSES)).eval()


@pytest.mark.parametrize("config", [BackboneConfig("small_cnn", width=4),
                                    BackboneConfig("resnet18", small_images=True)])
def test_classifier_round_trip(tmp_path: Path, config: BackboneConfig) -> None:
    model = _classifier(config)
    pre = PreprocessingConfig(image_size=16, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    path = tmp_path / "model.ckpt"
    save_classifier(path, model, CLASSES, config, pre, metadata={"test": {"accuracy": 0.5}})
    loaded = load_classifier(path)
    assert loaded.classes == CLASSES
    assert loaded.backbone == config
    assert loaded.preprocessing == pre
    assert loaded.metadata["test"]["accuracy"] == 0.5
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(x), loaded.model.eval()(x), strict=True):
            torch.testing.assert_close(a, b)


def test_backbone_round_trip_and_mismatch(tmp_path: Path) -> None:
    config = BackboneConfig("small_cnn", width=4)
    backbone = build_backbone(config)
    save_backbone(tmp_path / "b.ckpt", backbone, config)
    loaded = load_backbone(tmp_path / "b.ckpt", config)
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    with pytest.raises(CheckpointError, match="experiment asks for"):
        load_backbone(tmp_path / "b.ckpt", BackboneConfig("small_cnn", width=8))


class Payload:
    """An arbitrary object: unpickling it would mean running code from the file."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_loading_never_unpickles_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "clup-classifier/1", "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="not a readable clup checkpoint"):
        load_classifier(path)


def test_wrong_or_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "missing.ckpt")
    torch.save({"format": "something-else"}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a clup-classifier/1 checkpoint"):
        load_classifier(tmp_path / "other.ckpt")


def test_mismatching_weights_list_keys(tmp_path: Path) -> None:
    config = BackboneConfig("small_cnn", width=4)
    model = _classifier(config)
    path = tmp_path / "model.ckpt"
    save_classifier(path, model, CLASSES, config, PreprocessingConfig())
    data = torch.load(path, weights_only=True)
    data["state_dict"]["extra.weight"] = data["state_dict"].pop("head.weight")
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['head.weight'\].*extra.weight"):
        load_classifier(path)
