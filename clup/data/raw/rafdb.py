"""RAF-DB (basic), read from its owners' list file and aligned faces."""

from __future__ import annotations

import os
from pathlib import Path

from clup.data.raw.base import (
    RawDataset,
    RawFace,
    check_unique,
    list_lines,
    map_label,
    parse_int,
    resolve_inside,
    split_fields,
)
from clup.errors import ManifestError

LIST = "basic/EmoLabel/list_patition_label.txt"  # "patition" is the owners' spelling
IMAGES = "basic/Image/aligned"
FIELDS = ("image_name", "label")
SPLIT_PREFIXES = {"train_": "train", "test_": "test"}
TO_CANONICAL = {raw: raw - 1 for raw in range(1, 8)}
"""RAF-DB numbers the canonical order from 1 (1 Surprise ... 7 Neutral)."""


class RafDB(RawDataset):
    """RAF-DB's basic part: the split is the image name's prefix, the faces are already cut."""

    name = "rafdb"
    title = "RAF-DB"
    folder = "RAF-DB"
    contents = f"{LIST} and the aligned faces {IMAGES}/<name>_aligned.jpg"
    obtain = "request it from its authors, http://www.whdeng.cn/raf/model1.html"
    required = (LIST, IMAGES)

    def read(self, root: Path, *, split_seed: int = 0) -> list[RawFace]:
        self.check_layout(root)
        faces = [_face(root, where, line) for where, line in list_lines(root / LIST)]
        check_unique(faces)
        return faces


def _face(root: Path, where: str, line: str) -> RawFace:
    name, label = split_fields(line, FIELDS, where)
    stem = os.path.splitext(name)[0]
    split = _split(name, where)
    return RawFace(
        key=f"{split}/{stem}",
        split=split,
        label=map_label(parse_int(label, "label", where), TO_CANONICAL, where),
        where=where,
        image=resolve_inside(root / IMAGES, f"{stem}_aligned.jpg", where),
    )


def _split(name: str, where: str) -> str:
    for prefix, split in SPLIT_PREFIXES.items():
        if name.startswith(prefix):
            return split
    raise ManifestError(
        f"{where}: image name {name!r} must start with {' or '.join(SPLIT_PREFIXES)}, "
        "which gives its split"
    )
