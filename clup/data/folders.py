"""The generic folder layouts: a folder per class, or a plain folder of unlabelled images.

Class folders: `root/<class>/*.jpg`, or `root/train/<class>/...` and
`root/test/<class>/...` for explicit splits. Folder names are matched to the
experiment's classes case-insensitively, with the usual synonyms (angry/anger,
happy/happiness, sad/sadness, surprised/surprise). A folder matching no class
stops the run: dropping it silently would change the label set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clup.data.manifest import SPLITS, UNLABELLED, ImageTable, canonical_name
from clup.errors import ManifestError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order; hidden entries skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_class_folders(root: Path, classes: list[str]) -> dict[str, ImageTable]:
    """Every split of a class-folder dataset; without `train/` the whole root is train."""
    if not root.is_dir():
        raise ManifestError(f"class-folder dataset {root} does not exist")
    if (root / "train").is_dir():
        return {s: _read_split(root / s, classes) if (root / s).is_dir() else _empty()
                for s in SPLITS}
    return {"train": _read_split(root, classes), "test": _empty()}


def read_image_folder(root: Path) -> dict[str, ImageTable]:
    """A folder of unlabelled images: all of them are target train images."""
    if not root.is_dir():
        raise ManifestError(f"image folder {root} does not exist")
    paths = image_files(root)
    if not paths:
        raise ManifestError(f"{root} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    labels = np.full(len(paths), UNLABELLED, dtype=np.int64)
    return {"train": ImageTable(paths, labels), "test": _empty()}


def _read_split(folder: Path, classes: list[str]) -> ImageTable:
    ids = {canonical_name(c): i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                raise ManifestError(f"{entry} is not inside a class folder of {folder}")
            continue
        label = ids.get(canonical_name(entry.name))
        if label is None:
            raise ManifestError(
                f"folder {entry} matches none of the experiment's classes {classes}; "
                "rename it, or declare the classes in the experiment's `classes` list"
            )
        found = image_files(entry)
        paths += found
        labels += [label] * len(found)
    return ImageTable(paths, np.asarray(labels, dtype=np.int64))


def _empty() -> ImageTable:
    return ImageTable([], np.zeros(0, dtype=np.int64))
