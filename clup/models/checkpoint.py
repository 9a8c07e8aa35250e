"""Classifier checkpoints that load without executing code.

A checkpoint is a plain dict of tensors, strings, numbers and lists, so
`torch.load(..., weights_only=True)` can read it: loading never runs code from the file.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clup.config import BackboneConfig, PreprocessingConfig, from_dict
from clup.errors import CheckpointError
from clup.io import save_torch
from clup.models.backbones import Backbone, build_backbone

FORMAT = "clup-classifier/1"
BACKBONE_FORMAT = "clup-backbone/1"


class Classifier(nn.Module):
    """A backbone and a linear head; `forward` returns (embedding, logits)."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.backbone(x)
        return embedding, self.head(embedding)


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
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
    )


def load_classifier(path: str | Path) -> LoadedClassifier:
    data = _load(path, FORMAT)
    backbone = from_dict(BackboneConfig, data["backbone"], "backbone")
    preprocessing = from_dict(PreprocessingConfig, data["preprocessing"], "preprocessing")
    model = Classifier(build_backbone(backbone), len(data["classes"]))
    _load_state(model, data["state_dict"], path)
    return LoadedClassifier(model, list(data["classes"]), backbone, preprocessing,
                            dict(data["metadata"]))


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
    data = _load(path, BACKBONE_FORMAT)
    stored = from_dict(BackboneConfig, data["backbone"], "backbone")
    if stored != expected:
        raise CheckpointError(
            f"{path} holds a {stored} backbone but the experiment asks for {expected}"
        )
    backbone = build_backbone(stored)
    _load_state(backbone, data["state_dict"], path)
    return backbone


def _load(path: str | Path, expected_format: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(f"{path} is not a readable clup checkpoint: {err}") from err
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a {expected_format} checkpoint (found {found!r})")
    return data


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match the model: missing keys {result.missing_keys}, "
            f"unexpected keys {result.unexpected_keys}"
        )
