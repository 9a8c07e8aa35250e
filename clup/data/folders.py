"""The generic folder layouts: a folder per class, or a plain folder of unlabelled images.

Class folders: `root/<class>/*.jpg`, or `root/train/<class>/...` and
`root/test/<class>/...` for explicit splits. Split folders are matched
case-insensitively (`Train/`, `TEST/`), and so are class folders to the experiment's
classes, with the usual synonyms (angry/anger, happy/happiness, sad/sadness,
surprised/surprise). A folder matching no class stops the run: dropping it silently
would change the label set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clup.data.images import IMAGE_SUFFIXES, image_files
from clup.data.manifest import SPLITS, UNLABELLED, ImageTable, canonical_name
from clup.errors import ManifestError

LISTED_SUFFIXES = ", ".join(sorted(IMAGE_SUFFIXES))
"""The image suffixes, for messages."""


def read_class_folders(root: Path, classes: list[str]) -> dict[str, ImageTable]:
    """Every split of a class-folder dataset; without `train/` the whole root is train."""
    if not root.is_dir():
        raise ManifestError(f"class-folder dataset {root} does not exist")
    splits = _split_folders(root)
    if "train" in splits:
        tables = {s: _read_split(splits[s], classes) if s in splits else _empty()
                  for s in SPLITS}
    else:
        tables = {"train": _read_split(root, classes), "test": _empty()}
    if not any(len(table) for table in tables.values()):
        raise ManifestError(f"class-folder dataset {root} holds no image ({LISTED_SUFFIXES}) "
                            "in its class folders")
    return tables


def _split_folders(root: Path) -> dict[str, Path]:
    """The split folders of `root` by split, whatever the case of their names."""
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        split = entry.name.lower()
        if split not in SPLITS or not entry.is_dir():
            continue
        if split in found:
            raise ManifestError(f"{root} has two {split} folders, {found[split].name} and "
                                f"{entry.name}; merge them into one")
        found[split] = entry
    return found


def read_image_folder(root: Path) -> dict[str, ImageTable]:
    """A folder of unlabelled images: all of them are target train images."""
    if not root.is_dir():
        raise ManifestError(f"image folder {root} does not exist")
    paths = image_files(root)
    if not paths:
        raise ManifestError(f"image folder {root} holds no image ({LISTED_SUFFIXES})")
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
