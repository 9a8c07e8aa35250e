"""What every native-layout reader shares: the face record and the reader interface.

A reader only parses its dataset's list files into `RawFace` records (one per
face, label already mapped to the canonical class order). Decoding, cropping,
resizing and writing are `clup.data.prepare`'s job, the same for every dataset.

Errors in list files stop the run (`ManifestError` naming file and line): a
malformed line, an unknown split, a label id outside the dataset's id range,
a path escaping the dataset folder. Problems with single images (missing,
unreadable, over the pixel limit, box outside the image) are found while
preparing and are skipped and counted there.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clup.errors import ClupError, ManifestError

Box = tuple[int, int, int, int]
"""left, top, right, bottom in pixels (PIL's crop box)."""


@dataclass(frozen=True)
class RawFace:
    """One face of a raw dataset, ready to be cut out and written.

    `key` names the prepared image, relative to the prepared `images/` folder and
    without suffix (for example `train/train_00001`); it is unique in the dataset.
    Exactly one of `image` (a file inside the dataset root) and `pixels` (FER2013's
    space-separated grey values of a 48x48 image) is set.
    """

    key: str
    split: str
    label: int
    where: str
    image: Path | None = None
    box: Box | None = None
    pixels: str | None = None


class MissingDataset(ClupError):
    """A dataset folder or one of its list files is not where it was expected."""


class RawDataset(ABC):
    """A dataset in the layout its owners distribute."""

    name: str
    """Command-line and config name: `afe`, `rafdb`, `expw`, `fer2013`."""
    title: str
    """Human name: `AFE`, `RAF-DB`, `ExpW`, `FER2013`."""
    folder: str
    """Default folder name under the data root."""
    contents: str
    """What the folder must contain, for error messages."""
    obtain: str
    """Where the dataset is obtained, for error messages."""
    required: tuple[str, ...]
    """Paths relative to the root that must exist."""
    seeded_split: bool = False
    """Whether clup draws the train/test split (from a seed) because the dataset has none."""

    def check_layout(self, root: Path) -> None:
        """Stop with a message saying what was expected when the root is incomplete."""
        missing = [p for p in self.required if not (root / p).exists()]
        if not root.is_dir() or missing:
            found = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
            raise MissingDataset(
                f"{self.title} was expected in {root}, which {found}. It should contain "
                f"{self.contents}. {self.title} is not downloadable by clup: {self.obtain}"
            )

    @abstractmethod
    def read(self, root: Path, *, split_seed: int = 0) -> list[RawFace]:
        """Parse the list files under `root` into records; `split_seed` matters to ExpW only."""


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """`root / relative`, refusing paths that leave the dataset folder.

    The check is on the written path (`..` components), not on where symlinks point:
    a dataset whose image folder is a link to another disk is legitimate.
    """
    if not relative:
        raise ManifestError(f"{where}: empty path")
    root = Path(os.path.normpath(root.absolute()))
    path = Path(os.path.normpath(root / relative))
    if not path.is_relative_to(root):
        raise ManifestError(f"{where}: path {relative!r} escapes the dataset folder {root}")
    return path


def parse_int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ManifestError(f"{where}: {what} must be an integer, got {text!r}") from None


def map_label(raw_id: int, mapping: dict[int, int], where: str) -> int:
    """Canonical id of a dataset's label id; an id outside the mapping stops the run."""
    if raw_id not in mapping:
        raise ManifestError(
            f"{where}: label id {raw_id} is not one of this dataset's ids {sorted(mapping)}"
        )
    return mapping[raw_id]


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 list file, streamed; a file in another encoding stops the run."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            yield from file
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: expected UTF-8 text, got {error.reason}") from None


def list_lines(path: Path) -> Iterator[tuple[str, str]]:
    """`(file:line, text)` for each non-blank line of a list file."""
    for number, line in enumerate(text_lines(path), start=1):
        if line.strip():
            yield f"{path}:{number}", line


def split_fields(line: str, names: Sequence[str], where: str, *, path_first: bool = False
                 ) -> list[str]:
    """The whitespace-separated fields of a line, which must be exactly `names`.

    With `path_first` the first field keeps whatever precedes the others, so a path
    holding spaces still parses.
    """
    text = line.strip()
    fields = text.rsplit(maxsplit=len(names) - 1) if path_first else text.split()
    if len(fields) != len(names):
        raise ManifestError(
            f"{where}: expected {len(names)} fields ({' '.join(names)}), "
            f"got {len(fields)}: {text!r}"
        )
    return fields


def check_unique(faces: Iterable[RawFace]) -> None:
    """Stop at the first face whose key was already given, naming both places."""
    first: dict[str, str] = {}
    for face in faces:
        if face.key in first:
            raise ManifestError(
                f"{face.where}: the face {face.key!r} is listed again; it was already "
                f"listed at {first[face.key]}"
            )
        first[face.key] = face.where
