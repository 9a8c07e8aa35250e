"""Classifier checkpoints that load without executing code.

A checkpoint is a plain dict of tensors, strings, numbers and lists, so
`torch.load(..., weights_only=True)` can read it: loading never runs code from the file.
It names the BatchNorm layers that normalise with each batch's statistics at evaluation
(`batch_statistics`, Tent's adapted layers), so a loaded model evaluates as it did when saved.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.parametrizations import weight_norm

from clup.config import HEADS, BackboneConfig, PreprocessingConfig, from_dict
from clup.errors import CheckpointError, ConfigError
from clup.io import save_torch
from clup.models.backbones import Backbone, build_backbone

T = TypeVar("T")

FORMAT = "clup-classifier/1"
BACKBONE_FORMAT = "clup-backbone/1"
SHOT_BOTTLENECK_DIM = 256
"""SHOT's bottleneck width (Liang et al., ICML 2020), also NRC's and AaD's."""


class Classifier(nn.Module):
    """A backbone, a bottleneck and a linear classifier; `forward` returns (features, logits).

    The features are the classifier's input, `bottleneck(backbone(x))`: what CluP's stage 1
    clusters (the reference clusters the tensor its classifier reads, altndrr/clup
    src/systems/classification.py:236-239) and what SHOT, NRC and AaD build on.
    `head="linear"`: no bottleneck, one linear layer on the backbone's pooled embedding.
    `head="shot"`: SHOT's shape (Liang et al., ICML 2020): a bottleneck `Linear(out_dim, 256)`
    + `BatchNorm1d(256)`, then a weight-normalised linear classifier.
    """

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "linear") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
        self.backbone = backbone
        self.head_kind = head
        self.num_classes = num_classes
        if head == "shot":
            self.bottleneck: nn.Module = nn.Sequential(
                nn.Linear(backbone.out_dim, SHOT_BOTTLENECK_DIM),
                nn.BatchNorm1d(SHOT_BOTTLENECK_DIM),
            )
            self.head = weight_norm(nn.Linear(SHOT_BOTTLENECK_DIM, num_classes))
        else:
            # No parameters, so a linear classifier's state dict keeps its original keys.
            self.bottleneck = nn.Identity()
            self.head = nn.Linear(backbone.out_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        """The width of `features`: the classifier's input."""
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input: the bottleneck's output (shot) or the embedding (linear)."""
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return features, self.head(features)


def use_batch_statistics(norm: _BatchNorm) -> None:
    """Normalise with the batch's own statistics in training and at evaluation alike, as
    Tent's `configure_model` does (DequanWang/tent tent.py:106-109 @ e9e926a): no running
    statistics are kept, so none are saved either."""
    norm.track_running_stats = False
    norm.running_mean = None
    norm.running_var = None


def batch_statistics_norms(model: nn.Module) -> list[str]:
    """The BatchNorm layers of `model` without running statistics, by module name."""
    return [name for name, module in model.named_modules()
            if isinstance(module, _BatchNorm)
            and module.running_mean is None and module.running_var is None]


class LoadedClassifier:
    """A classifier with the settings it was trained under."""

    def __init__(
        self,
        model: Classifier,
        classes: list[str],
        backbone: BackboneConfig,
        preprocessing: PreprocessingConfig,
        metadata: dict[str, Any],
    ) -> None:
        self.model = model
        self.classes = classes
        self.backbone = backbone
        self.preprocessing = preprocessing
        self.metadata = metadata


def save_classifier(
    path: str | Path,
    model: Classifier,
    classes: list[str],
    backbone: BackboneConfig,
    preprocessing: PreprocessingConfig,
    metadata: dict[str, Any] | None = None,
) -> None:
    save_torch(
        path,
        {
            "format": FORMAT,
            "classes": list(classes),
            "backbone": asdict(backbone),
            "preprocessing": asdict(preprocessing),
            "metadata": metadata or {},
            "head": model.head_kind,
            "batch_statistics": batch_statistics_norms(model),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
    )


def load_classifier(path: str | Path) -> LoadedClassifier:
    data = _load(path, FORMAT, ("classes", "backbone", "preprocessing", "state_dict"))
    classes = data["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: classes must be a list of names, got {classes!r}")
    backbone = _settings(BackboneConfig, data, "backbone", path)
    preprocessing = _settings(PreprocessingConfig, data, "preprocessing", path)
    # Checkpoints written before SHOT's head existed have no `head` key: they are linear.
    head = data.get("head", "linear")
    if head not in HEADS:
        raise CheckpointError(f"{path} has an unknown head {head!r}; expected one of {list(HEADS)}")
    model = Classifier(build_backbone(backbone), len(classes), head)
    # Checkpoints written before Tent's batch statistics existed have no such list.
    for name in data.get("batch_statistics", []):
        _use_batch_statistics(model, name, path)
    described = f"{len(classes)} classes, a {head} head, backbone {data['backbone']}"
    _load_state(model, data["state_dict"], path, described)
    return LoadedClassifier(model, list(classes), backbone, preprocessing,
                            dict(data.get("metadata", {})))


def _settings(cls: type[T], data: dict[str, Any], key: str, path: str | Path) -> T:
    """The `key` settings of a checkpoint, as the dataclass `cls`."""
    try:
        return from_dict(cls, data[key], key)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err


def _use_batch_statistics(model: Classifier, name: str, path: str | Path) -> None:
    try:
        norm = model.get_submodule(name)
    except AttributeError:
        norm = None
    if not isinstance(norm, _BatchNorm):
        raise CheckpointError(f"{path} lists {name!r} under batch_statistics, but the model "
                              "has no BatchNorm layer of that name")
    use_batch_statistics(norm)


def save_backbone(path: str | Path, backbone: Backbone, config: BackboneConfig) -> None:
    save_torch(
        path,
        {
            "format": BACKBONE_FORMAT,
            "backbone": asdict(config),
            "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        },
    )


def load_backbone(path: str | Path, expected: BackboneConfig) -> Backbone:
    data = _load(path, BACKBONE_FORMAT, ("backbone", "state_dict"))
    stored = _settings(BackboneConfig, data, "backbone", path)
    if stored != expected:
        raise CheckpointError(
            f"{path} holds a {stored} backbone but the experiment asks for {expected}"
        )
    backbone = build_backbone(stored)
    _load_state(backbone, data["state_dict"], path, f"backbone {data['backbone']}")
    return backbone


def _load(path: str | Path, expected_format: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The checkpoint at `path`, checked to be of `expected_format` and to hold `keys`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = _torch_load(path, f"{path} is not a readable clup checkpoint")
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a {expected_format} checkpoint (found {found!r})")
    for key in keys:
        if key not in data:
            raise CheckpointError(f"{path} lacks the key {key!r} that every {expected_format} "
                                  "checkpoint holds")
    return data


def _torch_load(path: Path, refusal: str) -> Any:
    """`torch.load` with `weights_only=True`, so that no code in the file runs; a file it
    cannot read stops with `refusal` and why, in one sentence (torch's own text is long)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        if not zipfile.is_zipfile(path):
            reason = f"not a file torch.save wrote: {type(err).__name__}"
        elif isinstance(err, pickle.UnpicklingError):
            reason = "it holds Python objects besides tensors, which clup never unpickles"
        else:
            reason = f"torch.load failed with {type(err).__name__}"
        raise CheckpointError(f"{refusal} ({reason})") from err


def _load_state(module: nn.Module, state: Any, path: str | Path, described: str) -> None:
    """Load `state` into `module`, built from the checkpoint's settings (`described`)."""
    if not _is_state_dict(state):
        raise CheckpointError(f"{path}: state_dict must map names to tensors")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = _shape_mismatches(state, expected)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its own settings describe "
            f"({described}): {_differences(missing, unexpected, mismatched)}"
        )
    module.load_state_dict(state)


def _is_state_dict(data: Any) -> bool:
    return isinstance(data, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())


def _shape_mismatches(given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
                      ) -> list[str]:
    return [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items() if k in given and given[k].shape != v.shape]


def _differences(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    return (f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}, "
            f"shape mismatches (file vs model) {_few(mismatched)}")


HEAD_PREFIXES = ("fc.", "head.", "classifier.")
"""Keys of a classifier head in a pretrained file: replaced by the new head, so ignored."""


def load_pretrained(backbone: Backbone, path: str | Path, prefix: str = "") -> list[str]:
    """Initialise `backbone` from a state-dict file; return the keys it ignored.

    The file is read with `weights_only=True`. It may be a plain state dict (a
    torchvision ResNet-18's) or a dict holding one under `state_dict` (Lightning,
    clup); a key prefix such as `module.` or `backbone.body.` is detected or taken
    from `prefix`. Ignored: a classifier head (`fc.*`), and when a prefix is
    stripped, every key outside it (another head, a projector). Anything else that
    does not match the backbone stops with the keys at fault.
    """
    state = _read_state_dict(Path(path))
    expected = backbone.body.state_dict()
    prefix = prefix or _detect_prefix(state, expected)
    given = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    ignored = sorted(k for k in given if k not in expected and k.startswith(HEAD_PREFIXES))
    unexpected = sorted(set(given) - set(expected) - set(ignored))
    if prefix:
        ignored += sorted(k for k in state if not k.startswith(prefix))
    missing = sorted(set(expected) - set(given))
    mismatched = _shape_mismatches(given, expected)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path} does not fit the backbone (prefix stripped: {prefix!r}): "
            f"{_differences(missing, unexpected, mismatched)}"
        )
    backbone.body.load_state_dict({k: given[k] for k in expected})
    return ignored


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} do not exist")
    data = _torch_load(path, f"{path} cannot be read as weights")
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not _is_state_dict(data):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return data


def _detect_prefix(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """The prefix that makes the most of the file's keys match the backbone's.

    A prefix counts only if it matches at least half of the backbone's keys, so a
    file for another architecture is reported as it is, not through a chance prefix.
    """
    def matches(prefix: str) -> int:
        return sum(k[len(prefix):] in expected for k in state if k.startswith(prefix))

    candidates = {key[: -len(name)] for key in state for name in expected
                  if key.endswith(name) and key != name}
    best = max(sorted(candidates), key=matches, default="")
    return best if matches(best) > max(matches(""), len(expected) // 2) else ""


def _few(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... {len(keys) - limit} more' if len(keys) > limit else ''}]"
