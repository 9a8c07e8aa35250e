"""AFE (Asian Facial Expression, films) as released with the CluP reference code."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from clup.data.classes import CANONICAL_CLASSES
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

LISTS = {"train": "annos/TrainTest/Train.csv", "test": "annos/TrainTest/Test.csv"}
IMAGES = "src/image"
FIELDS = ("path", "left", "top", "right", "bottom", "emotion")
IDS = ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
"""AFE's ids 0..6 (Anger, Disgust, Fear, Happy, Neutral, Sad, Surprise), canonically named."""
TO_CANONICAL = {raw: CANONICAL_CLASSES.index(name) for raw, name in enumerate(IDS)}


class AFE(RawDataset):
    """AFE: one list file per split, a face box in a film frame per line."""

    name = "afe"
    title = "AFE"
    folder = "AFE"
    contents = f"the frames under {IMAGES}/ and the lists {' and '.join(LISTS.values())}"
    obtain = "its authors released it with the CluP reference code; request it from them"
    required = (*LISTS.values(), IMAGES)

    def read(self, root: Path, *, split_seed: int = 0) -> list[RawFace]:
        self.check_layout(root)
        faces = [_face(root, split, where, line)
                 for split, path in LISTS.items() for where, line in list_lines(root / path)]
        check_unique(faces)
        return faces


def _face(root: Path, split: str, where: str, line: str) -> RawFace:
    path, *box, emotion = split_fields(line, FIELDS, where, path_first=True)
    left, top, right, bottom = (
        parse_int(text, name, where) for text, name in zip(box, FIELDS[1:5], strict=True)
    )
    image = resolve_inside(root / IMAGES, path, where)
    return RawFace(
        # The box is part of the key: a frame may hold several faces.
        key=f"{split}/{os.path.splitext(posixpath.normpath(path))[0]}"
            f"_{left}_{top}_{right}_{bottom}",
        split=split,
        label=map_label(parse_int(emotion, "emotion", where), TO_CANONICAL, where),
        where=where,
        image=image,
        box=(left, top, right, bottom),
    )
