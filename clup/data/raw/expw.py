"""ExpW (Expression in-the-Wild): whole photos, one list line per face, no official split."""

from __future__ import annotations

import hashlib
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
from clup.data.raw.fer2013 import TO_CANONICAL
from clup.errors import ManifestError

LIST = "label/label.lst"
IMAGES = "image/origin"
FIELDS = ("image_name", "face_id_in_image", "face_box_top", "face_box_left", "face_box_right",
          "face_box_bottom", "face_box_confidence", "expression_label")
TEST_FRACTION = 0.2


class ExpW(RawDataset):
    """ExpW: faces are cut from photos by their boxes; whole photos go to train or to test."""

    name = "expw"
    title = "ExpW"
    folder = "ExpW"
    contents = f"the photos {IMAGES}/<image_name> and the face list {LIST}"
    obtain = ("request it from its authors, "
              "http://mmlab.ie.cuhk.edu.hk/projects/socialrelation/index.html")
    required = (LIST, IMAGES)
    seeded_split = True

    def read(self, root: Path, *, split_seed: int = 0) -> list[RawFace]:
        self.check_layout(root)
        faces = [_face(root, where, line, split_seed) for where, line in list_lines(root / LIST)]
        check_unique(faces)
        return faces


def in_test(image_name: str, split_seed: int) -> bool:
    """Whether a photo, with all its faces, belongs to the test split.

    A hash of the seed and the photo's name decides each photo alone: the split does
    not depend on which other photos are listed nor in what order, and it is the same
    on every machine and Python version (unlike `hash` or a shuffle), so it is stable
    without storing it. Deciding per photo keeps faces of one photo out of both splits.
    """
    digest = hashlib.sha256(f"{split_seed}:{image_name}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64 < TEST_FRACTION


def _face(root: Path, where: str, line: str, split_seed: int) -> RawFace:
    fields = split_fields(line, FIELDS, where)
    image_name = fields[0]
    face_id, top, left, right, bottom = (
        parse_int(text, name, where) for text, name in zip(fields[1:6], FIELDS[1:6], strict=True)
    )
    _check_float(fields[6], FIELDS[6], where)
    split = "test" if in_test(image_name, split_seed) else "train"
    return RawFace(
        key=f"{split}/{Path(image_name).stem}_{face_id}",
        split=split,
        label=map_label(parse_int(fields[7], FIELDS[7], where), TO_CANONICAL, where),
        where=where,
        image=resolve_inside(root / IMAGES, image_name, where),
        box=(left, top, right, bottom),
    )


def _check_float(text: str, what: str, where: str) -> None:
    """The confidence is not used, but a value that does not parse means a damaged line."""
    try:
        float(text)
    except ValueError:
        raise ManifestError(f"{where}: {what} must be a number, got {text!r}") from None
