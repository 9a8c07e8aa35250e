"""Image files: which files are images, and how every part of clup decodes one.

Decoding gives 8-bit pixels whatever the file holds: 16-bit greyscale (Pillow's `I;16`,
`I;16B`, and `I`, the mode it gives some 16-bit files) is scaled by 1/257 and floats
(`F`) are taken as 0..1, where Pillow's own conversion would clip them to white. Pillow
already reduces 16-bit colour to 8 bits when it opens a file.

Pillow refuses images over `Image.MAX_IMAGE_PIXELS` as possible decompression bombs;
the environment variable `CLUP_MAX_IMAGE_PIXELS` replaces that limit in the processes
that decode, for users who trust their large files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from clup.data.raw.base import Box
from clup.errors import ConfigError, ManifestError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MAX_PIXELS_VARIABLE = "CLUP_MAX_IMAGE_PIXELS"
MISSING = "missing image"
UNREADABLE = "unreadable image"
TOO_LARGE = f"image over the pixel limit ({MAX_PIXELS_VARIABLE})"
GREY_MODES = {"1", "L", "LA", "La"}
SIXTEEN_BIT_MAX = 65535


class UnreadableImage(ManifestError):
    """An image file that cannot be decoded; `reason` is the short form prepare counts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order; hidden entries skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def holds_images(folder: Path) -> bool:
    """Whether any image file lies under `folder`; stops at the first."""
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.rglob("*"))


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 array; greyscale sources are replicated to three channels."""
    with open_image(path) as image:
        return np.asarray(decode(image, path).convert("RGB"))


def open_image(path: Path) -> Image.Image:
    """`path` opened lazily (its size is known, its pixels not read), within the pixel
    limit; every failure is an `UnreadableImage` naming the file."""
    limit = pixel_limit()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it: refuse from the limit on.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError:
        raise UnreadableImage(MISSING, f"image {path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(
            TOO_LARGE, f"image {path} has more than {limit} pixels, Pillow's guard against "
            f"decompression bombs; if you trust the file, set the environment variable "
            f"{MAX_PIXELS_VARIABLE} to a larger number of pixels") from None
    except (OSError, ValueError) as err:
        raise UnreadableImage(UNREADABLE, f"image {path} cannot be read: {err}") from None


def decode(image: Image.Image, path: Path, box: Box | None = None) -> Image.Image:
    """The pixels of an opened image, cut to `box`, in 8 bits: `L` when grey, else `RGB`."""
    try:
        image.load()
        return eight_bit(image if box is None else image.crop(box))
    except (OSError, ValueError) as err:
        raise UnreadableImage(UNREADABLE, f"image {path} cannot be read: {err}") from None


def eight_bit(image: Image.Image) -> Image.Image:
    """`image` as 8-bit `L` (grey) or `RGB`; deeper grey values are scaled, not clipped."""
    if image.mode.startswith("I"):
        values = np.clip(np.asarray(image, dtype=np.float64), 0, SIXTEEN_BIT_MAX)
        return _grey(values * (255 / SIXTEEN_BIT_MAX))
    if image.mode == "F":
        return _grey(np.clip(np.nan_to_num(np.asarray(image)), 0, 1) * 255)
    return image.convert("L" if image.mode in GREY_MODES else "RGB")


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(values).astype(np.uint8))


def pixel_limit() -> int | None:
    """Pillow's pixel limit, first set from `CLUP_MAX_IMAGE_PIXELS` where that is given."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "")
    if text.strip():
        try:
            limit = int(text)
        except ValueError:
            limit = 0
        if limit < 1:
            raise ConfigError(f"{MAX_PIXELS_VARIABLE} must be a positive whole number of "
                              f"pixels, got {text!r}")
        Image.MAX_IMAGE_PIXELS = limit
    return Image.MAX_IMAGE_PIXELS
