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
    load_pretrained,
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
    with pytest.raises(CheckpointError, match=r"missing keys \[head.weight\].*extra.weight"):
        load_classifier(path)


def _resnet_weights(path: Path, prefix: str = "", wrap: bool = False) -> dict:
    from torchvision.models import resnet18

    state = {f"{prefix}{k}": v for k, v in resnet18(weights=None).state_dict().items()}
    torch.save({"state_dict": state} if wrap else state, path)
    return state


@pytest.mark.parametrize(("prefix", "wrap", "given"), [
    ("", False, ""), ("module.", False, ""), ("model.backbone.body.", True, ""),
    ("encoder.", False, "encoder."),
])
def test_pretrained_torchvision_weights_load_with_any_prefix(
        tmp_path: Path, prefix: str, wrap: bool, given: str) -> None:
    state = _resnet_weights(tmp_path / "w.pth", prefix, wrap)
    backbone = build_backbone(BackboneConfig(name="resnet18"))
    ignored = load_pretrained(backbone, tmp_path / "w.pth", given)
    assert ignored == ["fc.bias", "fc.weight"]
    loaded = backbone.body.layer4[1].conv2.weight
    assert torch.equal(loaded, state[f"{prefix}layer4.1.conv2.weight"])


def test_pretrained_weights_that_do_not_fit_list_the_keys(tmp_path: Path) -> None:
    state = _resnet_weights(tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"conv1.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"):
        load_pretrained(build_backbone(BackboneConfig(small_images=True)), tmp_path / "w.pth")
    del state["layer1.0.bn1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(build_backbone(BackboneConfig()), tmp_path / "partial.pth")
    assert "missing keys [layer1.0.bn1.weight]" in str(err.value)
    assert "unexpected keys [extra.weight]" in str(err.value)


def test_pretrained_files_that_are_no_weights_are_refused(tmp_path: Path) -> None:
    backbone = build_backbone(BackboneConfig())
    with pytest.raises(CheckpointError, match="do not exist"):
        load_pretrained(backbone, tmp_path / "none.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_pretrained(backbone, tmp_path / "list.pth")
    torch.save({"w": Path("/")}, tmp_path / "code.pth")  # not loadable with weights_only
    with pytest.raises(CheckpointError, match="cannot be read as weights"):
        load_pretrained(backbone, tmp_path / "code.pth")


def test_a_clup_classifier_checkpoint_can_initialise_a_backbone(tmp_path: Path) -> None:
    config = BackboneConfig(name="small_cnn", width=4)
    source = _classifier(config)
    save_classifier(tmp_path / "model.ckpt", source, CLASSES, config, PreprocessingConfig())
    backbone = build_backbone(config)
    assert load_pretrained(backbone, tmp_path / "model.ckpt") == ["head.bias", "head.weight"]
    for mine, theirs in zip(backbone.parameters(), source.backbone.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_shot_head_round_trip(tmp_path: Path) -> None:
    config = BackboneConfig("small_cnn", width=4)
    torch.manual_seed(0)
    model = Classifier(build_backbone(config), len(CLASSES), head="shot")
    model.bottleneck[1].running_mean.uniform_()  # a trained BatchNorm's statistics must survive
    model.eval()
    path = tmp_path / "model.ckpt"
    save_classifier(path, model, CLASSES, config, PreprocessingConfig(image_size=16))
    loaded = load_classifier(path).model.eval()
    assert loaded.head_kind == "shot"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features, logits = loaded(x)
        assert loaded.backbone(x).shape == (2, config.width * 8)
        assert features.shape == (2, loaded.feature_dim) == (2, 256)
        torch.testing.assert_close(loaded.features(x), features)
        torch.testing.assert_close(loaded.head(features), logits)
        for a, b in zip(model(x), (features, logits), strict=True):
            torch.testing.assert_close(a, b)


def test_checkpoints_without_a_head_kind_are_linear(tmp_path: Path) -> None:
    config = BackboneConfig("small_cnn", width=4)
    path = tmp_path / "model.ckpt"
    save_classifier(path, _classifier(config), CLASSES, config, PreprocessingConfig())
    data = torch.load(path, weights_only=True)
    assert data.pop("head") == "linear"
    torch.save(data, path)
    loaded = load_classifier(path).model
    assert loaded.head_kind == "linear"
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval().features(x), loaded.backbone(x))
    data["head"] = "mlp"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="unknown head 'mlp'"):
        load_classifier(path)


@pytest.mark.parametrize(("stem", "kernel", "padding", "side"),
                         [("small", 3, 1, 16), ("reference", 7, 2, 14)])
def test_small_image_stems_keep_the_resolution_and_the_reference_is_7x7_padding_2(
        stem: str, kernel: int, padding: int, side: int) -> None:
    backbone = build_backbone(BackboneConfig(small_images=True, stem=stem))
    conv = backbone.body.conv1
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (1, 1)
    assert conv.padding == (padding, padding)
    assert isinstance(backbone.body.maxpool, torch.nn.Identity)
    # A 16 px input: 3x3 padding 1 keeps 16; 7x7 padding 2 gives 14 (the reference's).
    assert backbone.body.relu(conv(torch.zeros(1, 3, 16, 16))).shape[-1] == side
