"""FER2013, read from the single CSV of Kaggle's challenge: 48x48 grey faces as text."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from clup.data.classes import CANONICAL_CLASSES
from clup.data.raw.base import RawDataset, RawFace, map_label, parse_int, text_lines
from clup.errors import ManifestError

FILE = "fer2013.csv"
COLUMNS = ("emotion", "pixels", "Usage")
USAGE_SPLITS = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}
"""Both test parts go to test, as the reference release did."""
IDS = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral")
"""FER2013's ids 0..6 (Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral), canonically named."""
TO_CANONICAL = {raw: CANONICAL_CLASSES.index(name) for raw, name in enumerate(IDS)}
PIXELS = 48 * 48
_GREY = r"0*(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# One regular expression checks a whole row several times faster than parsing its
# 2304 numbers, which matters over 35,887 rows; it is only the fast path to "valid".
_VALID_PIXELS = re.compile(rf"{_GREY}(?:\s+{_GREY}){{{PIXELS - 1}}}")


class FER2013(RawDataset):
    """FER2013: one CSV row per face, the image itself in the `pixels` column."""

    name = "fer2013"
    title = "FER2013"
    folder = "FER2013"
    contents = f"{FILE} (columns {','.join(COLUMNS)})"
    obtain = ('download fer2013.csv from Kaggle, "Challenges in Representation Learning: '
              'Facial Expression Recognition Challenge"')
    required = (FILE,)

    def read(self, root: Path, *, split_seed: int = 0) -> list[RawFace]:
        self.check_layout(root)
        path = root / FILE
        rows = csv.reader(text_lines(path))
        try:
            return _faces(rows, path)
        except csv.Error as error:
            raise ManifestError(f"{path}:{rows.line_num}: not valid CSV ({error})") from None


def _faces(rows: Any, path: Path) -> list[RawFace]:
    """The faces of a `csv.reader` (its type is private) after the header line."""
    header = next(rows, [])
    columns = _columns(header, f"{path}:1")
    return [_face(row, len(header), columns, path, rows.line_num) for row in rows if row]


def _columns(header: list[str], where: str) -> list[int]:
    """Where each of COLUMNS is; some copies of the file have spaces around the names."""
    names = [name.strip() for name in header]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise ManifestError(
            f"{where}: the header must name the columns {', '.join(COLUMNS)}; "
            f"got {','.join(header)!r}, which lacks {', '.join(missing)}"
        )
    return [names.index(column) for column in COLUMNS]


def _face(row: list[str], width: int, columns: list[int], path: Path, line: int) -> RawFace:
    where = f"{path}:{line}"
    if len(row) != width:
        raise ManifestError(f"{where}: expected {width} fields as in the header, got {len(row)}")
    emotion, pixels, usage = (row[i].strip() for i in columns)
    if usage not in USAGE_SPLITS:
        raise ManifestError(
            f"{where}: Usage must be one of {', '.join(USAGE_SPLITS)}, got {usage!r}"
        )
    _check_pixels(pixels, where)
    split = USAGE_SPLITS[usage]
    return RawFace(
        key=f"{split}/{line:05d}",
        split=split,
        label=map_label(parse_int(emotion, "emotion", where), TO_CANONICAL, where),
        where=where,
        pixels=pixels,
    )


def _check_pixels(pixels: str, where: str) -> None:
    if _VALID_PIXELS.fullmatch(pixels):
        return
    values = pixels.split()
    bad = next((v for v in values if not re.fullmatch(_GREY, v)), None)
    got = f"{len(values)} values" if bad is None else f"the value {bad!r}"
    raise ManifestError(
        f"{where}: pixels must be {PIXELS} integers 0..255 separated by spaces "
        f"(a 48x48 grey image), got {got}"
    )
