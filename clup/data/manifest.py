"""The generic manifest layout: a CSV `path,label[,split]`, paths relative to the CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clup.errors import ManifestError

UNLABELLED = -1
SPLITS = ("train", "test")
SYNONYMS = {"angry": "anger", "happy": "happiness", "sad": "sadness", "surprised": "surprise"}


@dataclass(frozen=True)
class ImageTable:
    """The images of one split: absolute paths and canonical labels (-1 when unknown)."""

    paths: list[Path]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_labels(self) -> bool:
        return len(self.labels) > 0 and bool((self.labels != UNLABELLED).all())


def read_manifest(path: str | Path, classes: list[str]) -> dict[str, ImageTable]:
    """Read every split of a manifest. A manifest without `split` is all train."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    class_ids = _class_lookup(classes)
    rows: dict[str, tuple[list[Path], list[int]]] = {s: ([], []) for s in SPLITS}
    root = path.parent.resolve()
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if "path" not in header:
            raise ManifestError(f"{path}:1: header must be path,label[,split], got {header}")
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            split = (row.get("split") or "train").strip()
            if split not in SPLITS:
                raise ManifestError(f"{where}: split must be one of {SPLITS}, got {split!r}")
            image = _resolve(root, row["path"], where)
            paths, labels = rows[split]
            paths.append(image)
            labels.append(_parse_label(row.get("label"), class_ids, len(classes), where))
    return {s: ImageTable(p, np.asarray(lab, dtype=np.int64)) for s, (p, lab) in rows.items()}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return SYNONYMS.get(key, key)


def _class_lookup(classes: list[str]) -> dict[str, int]:
    return {canonical_name(c): i for i, c in enumerate(classes)}


def _resolve(root: Path, relative: str | None, where: str) -> Path:
    if not relative:
        raise ManifestError(f"{where}: empty path")
    image = (root / relative).resolve()
    if not image.is_relative_to(root):
        raise ManifestError(f"{where}: path {relative!r} escapes the dataset folder {root}")
    return image


def _parse_label(text: str | None, class_ids: dict[str, int], num_classes: int, where: str) -> int:
    text = (text or "").strip()
    if not text:
        return UNLABELLED
    if text.lstrip("-").isdigit():
        label = int(text)
        if not 0 <= label < num_classes:
            raise ManifestError(f"{where}: label {label} is outside 0..{num_classes - 1}")
        return label
    if canonical_name(text) in class_ids:
        return class_ids[canonical_name(text)]
    raise ManifestError(
        f"{where}: label {text!r} is neither a class id nor one of the classes {list(class_ids)}"
    )
