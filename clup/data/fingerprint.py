"""What a dataset holds, as one digest: so that a stage reruns when its images change.

A stage's settings name its dataset (a manifest, a folder), not what is in it: rows
appended to a manifest or images added to a folder after a run would otherwise leave every
stage "done". The digest covers the list of images (paths, labels, splits) and each file's
size and modification time, which is cheap (no image is decoded): for a manifest of
100,000 images, 1.9 s with reading the list (1.8 s of it, which a run does anyway), on
this project's 2-core machine.

One command reads a dataset's digest many times (each stage's fingerprint and those of its
upstream stages), so it is kept for the life of the process; `forget_data_digests` drops
what was kept, for a command that changes the data (preparing it) or a process that runs
several commands (the tests, a benchmark).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading

from clup.config import DatasetConfig
from clup.data.datasets import read_dataset
from clup.errors import ClupError

_KEPT: dict[tuple[str, tuple[str, ...]], str] = {}
_LOCK = threading.Lock()


def data_digest(dataset: DatasetConfig | None, classes: list[str]) -> str | None:
    """The digest of what `dataset` holds for `classes`; None when there is no dataset, and
    `unreadable` when it cannot be read yet (not rendered or prepared): a stage never
    finished under that, so it is never taken for done."""
    if dataset is None:
        return None
    key = (json.dumps(dataclasses.asdict(dataset), sort_keys=True), tuple(classes))
    with _LOCK:
        kept = _KEPT.get(key)
    if kept is not None:
        return kept
    try:
        tables = read_dataset(dataset, list(classes), "dataset")
    except (ClupError, OSError):
        return "unreadable"
    digest = hashlib.sha256()
    for split in sorted(tables):
        table = tables[split]
        for path, label in zip(table.paths, table.labels.tolist(), strict=True):
            stat = os.stat(path)
            digest.update(f"{split}\0{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                          .encode())
    value = digest.hexdigest()[:16]
    with _LOCK:
        _KEPT[key] = value
    return value


def forget_data_digests() -> None:
    with _LOCK:
        _KEPT.clear()
