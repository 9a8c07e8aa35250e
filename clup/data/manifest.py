"""The generic manifest layout: a CSV `path,label[,split]`, paths relative to the CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clup.data.images import holds_images
from clup.data.raw.base import resolve_inside, text_lines
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


def read_manifest(
    path: str | Path, classes: list[str], id_names: Sequence[str] | None = None
) -> dict[str, ImageTable]:
    """Read every split of a manifest. A manifest without `split` is all train.

    A numeric label is an index into `id_names` when given (prepared datasets use
    the canonical order), else into `classes`. Every listed image must exist: the
    missing ones are reported together, each with its line.
    """
    path = Path(path)
    check_manifest_file(path)
    class_ids = _class_lookup(classes)
    id_map = map_class_ids(id_names, classes, str(path)) if id_names is not None else None
    rows: dict[str, tuple[list[Path], list[int]]] = {s: ([], []) for s in SPLITS}
    missing: list[str] = []
    root = path.parent.resolve()
    for where, row in _rows(path):
        split = (row.get("split") or "train").strip()
        if split not in SPLITS:
            raise ManifestError(f"{where}: split must be one of {SPLITS}, got {split!r}")
        image = resolve_inside(root, row["path"] or "", where)
        if not image.is_file():
            missing.append(f"{where}: {row['path']}")
        paths, labels = rows[split]
        paths.append(image)
        labels.append(_parse_label(row.get("label"), class_ids, id_map, where))
    if not any(listed for listed, _ in rows.values()):
        raise ManifestError(f"manifest {path} lists no images: below its header it needs one "
                            "row per image")
    if missing:
        shown = "; ".join(missing[:5]) + ("; ..." if len(missing) > 5 else "")
        raise ManifestError(f"{len(missing)} images listed in {path} do not exist: {shown}")
    return {s: ImageTable(p, np.asarray(lab, dtype=np.int64)) for s, (p, lab) in rows.items()}


def check_manifest_file(path: Path, key: str | None = None) -> None:
    """Stop unless `path` is a file, telling a folder from a missing path; `key` names the
    setting it comes from (`target`)."""
    prefix = f"{key}.path: " if key else ""
    if path.is_dir():
        raise ManifestError(f"{prefix}{path} is a folder, but a manifest is a CSV file "
                            f"(path,label[,split]){_folder_advice(path)}")
    if not path.is_file():
        raise ManifestError(f"{prefix}manifest {path} does not exist")


def _folder_advice(folder: Path) -> str:
    """What the user may have meant by a folder given as a manifest."""
    tables = sorted(p.name for p in folder.glob("*.csv") if p.is_file())
    if tables:
        return f"; it holds {', '.join(tables)}: give that file as the path"
    if any(p.is_dir() and not p.name.startswith(".") and holds_images(p)
           for p in folder.iterdir()):
        return ("; its sub-folders hold images: for a folder per class set `kind: folders`, "
                "for unlabelled images `kind: images`")
    if holds_images(folder):
        return "; it holds images: for unlabelled images set `kind: images`"
    return ""


def _rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`(file:line, row)` per data row; UTF-8 with or without a byte-order mark (Excel).

    Blank lines are skipped, as `csv.DictReader` does; every other row has as many fields
    as the header.
    """
    reader = csv.reader(text_lines(path))
    try:
        header = next(reader, [])
        if "path" not in header:
            raise ManifestError(f"{path}:1: header must be path,label[,split], got {header}")
        for fields in reader:
            if not fields:
                continue
            where = f"{path}:{reader.line_num}"
            if len(fields) != len(header):
                raise ManifestError(
                    f"{where}: the header {','.join(header)} has {len(header)} fields, "
                    f"this row has {len(fields)}; an unknown value is an empty field, not a "
                    "missing one")
            yield where, dict(zip(header, fields, strict=True))
    except csv.Error as err:
        raise ManifestError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None


def map_class_ids(id_names: Sequence[str], classes: list[str], dataset: str
                  ) -> dict[int, int]:
    """Dataset id -> experiment id, by class name; the label set must not change silently."""
    ids = _class_lookup(classes)
    absent = [n for n in id_names if canonical_name(n) not in ids]
    if absent:
        raise ManifestError(
            f"{dataset} is labelled with the classes {list(id_names)}, but {absent} are not "
            f"among the experiment's classes {classes}"
        )
    return {i: ids[canonical_name(n)] for i, n in enumerate(id_names)}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return SYNONYMS.get(key, key)


def _class_lookup(classes: list[str]) -> dict[str, int]:
    return {canonical_name(c): i for i, c in enumerate(classes)}


def _parse_label(
    text: str | None, class_ids: dict[str, int], id_map: dict[int, int] | None, where: str
) -> int:
    text = (text or "").strip()
    if not text:
        return UNLABELLED
    if text.lstrip("-").isdigit():
        label = int(text)
        num_ids = len(id_map) if id_map is not None else len(class_ids)
        if not 0 <= label < num_ids:
            raise ManifestError(f"{where}: label {label} is outside 0..{num_ids - 1}")
        return id_map[label] if id_map is not None else label
    if canonical_name(text) in class_ids:
        return class_ids[canonical_name(text)]
    raise ManifestError(
        f"{where}: label {text!r} is neither a class id nor one of the classes {list(class_ids)}"
    )
