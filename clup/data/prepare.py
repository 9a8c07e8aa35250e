"""`clup prepare`: turn a raw dataset into the prepared form every stage reads.

Each face is decoded once, cropped to its box, resized to `size` x `size` and
written as `images/<key>.jpg`; `manifest.csv` (`path,label,split`, canonical
label ids, paths relative to the manifest) is written last. The work is spread
over processes and shows a progress bar.

Idempotent and resumable: `prepare.json` records the settings and the digests of
the raw list files once everything is written, so a second run returns at once;
images are written atomically (temporary name, then rename), so an interrupted
run leaves only complete images and the next run skips them.

Per face, bad input is skipped and counted (listed in `skipped.csv` with the
list file and line): a missing image file, an unreadable or truncated image, an
image over the pixel limit (`CLUP_MAX_IMAGE_PIXELS`, clup/data/images.py), a box
with no area or entirely outside its image. A box partly outside its image
is clipped to it and counted. Errors in the list files themselves stop the run
(see `clup.data.raw.base`).
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from clup.data.classes import CANONICAL_CLASSES
from clup.data.images import MISSING, UnreadableImage, decode, open_image
from clup.data.raw.base import Box, RawDataset, RawFace
from clup.errors import ClupError, ManifestError
from clup.io import atomic_path, file_lock, file_sha256, read_json, write_json, write_text
from clup.paths import PREPARED_ROOT_ENV

FORMAT = "clup-prepared/1"
MANIFEST = "manifest.csv"
RECORD = "prepare.json"
STARTED = "prepare.started.json"
SKIPPED = "skipped.csv"
IMAGES = "images"
SUFFIX = ".jpg"
JPEG_QUALITY = 95
CHUNK = 64
CLIPPED = "clipped"
OK = "ok"


@dataclass
class PrepareReport:
    """What a `prepare` call found and did."""

    out: Path
    already_done: bool
    faces: int
    written: int
    skipped: Counter = field(default_factory=Counter)
    clipped: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST

    def describe(self, title: str) -> str:
        if self.already_done:
            return f"{title}: already prepared in {self.out} ({self.written} faces), nothing to do"
        splits = ", ".join(f"{n} {s}" for s, n in self.split_counts.items())
        text = f"{title}: {self.written} of {self.faces} faces prepared in {self.out} ({splits})"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
            text += f"; skipped {sum(self.skipped.values())} ({reasons}), listed in " \
                    f"{self.out / SKIPPED}"
        if self.clipped:
            text += f"; {self.clipped} boxes partly outside their image were clipped"
        return text


def prepared_settings(dataset: RawDataset, root: Path, size: int, split_seed: int
                      ) -> dict[str, Any]:
    """Everything the prepared copy depends on; a change means another folder."""
    return {
        "format": FORMAT,
        "dataset": dataset.name,
        "size": size,
        "split_seed": split_seed if dataset.seeded_split else None,
        "lists": {p: file_sha256(root / p) for p in dataset.required if (root / p).is_file()},
    }


def is_prepared(out: Path, settings: dict[str, Any]) -> bool:
    record = out / RECORD
    return record.is_file() and read_json(record).get("settings") == settings


def prepare(
    dataset: RawDataset,
    root: Path,
    out: Path,
    *,
    size: int = 160,
    split_seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Prepare `dataset` from `root` into `out`; return at once if it is already there."""
    if size < 8:
        raise ManifestError(f"the prepared image size must be at least 8 pixels, got {size}")
    dataset.check_layout(root)
    settings = prepared_settings(dataset, root, size, split_seed)
    try:
        with file_lock(out.parent / f".{out.name}.lock",
                       f"[clup] {dataset.title}: another process is preparing {out}; waiting"):
            return _prepare_locked(dataset, root, out, settings, size, split_seed, workers,
                                   progress)
    except OSError as err:
        raise ClupError(
            f"writing the prepared copy into {out} failed ({err}); images written so far are "
            f"kept and a rerun continues from them. To prepare elsewhere, set "
            f"{PREPARED_ROOT_ENV} (or prepared_root in the user config)"
        ) from err


def _prepare_locked(dataset: RawDataset, root: Path, out: Path, settings: dict[str, Any],
                    size: int, split_seed: int, workers: int | None, progress: bool
                    ) -> PrepareReport:
    if is_prepared(out, settings):
        record = read_json(out / RECORD)
        return PrepareReport(out, True, record["faces"], record["written"])
    _claim(out, settings)
    faces = dataset.read(root, split_seed=split_seed)
    if not faces:
        raise ManifestError(f"{dataset.title} in {root} lists no face")
    _remove_partial_files(out / IMAGES)
    outcomes = _process(faces, out / IMAGES, size, workers or os.cpu_count() or 1,
                        progress, dataset.title)
    return _finish(out, settings, faces, outcomes)


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to write into a folder holding something else; note the settings we start with."""
    for marker in (out / RECORD, out / STARTED):
        if marker.is_file() and read_json(marker).get("settings") != settings:
            raise ManifestError(
                f"{out} holds a copy prepared with other settings "
                f"({read_json(marker).get('settings')}); remove it, or prepare into another "
                f"folder (--out, or {PREPARED_ROOT_ENV})"
            )
    if out.is_dir() and any(out.iterdir()) and not (out / STARTED).is_file():
        raise ManifestError(f"{out} is not empty and was not made by clup prepare; prepare "
                            f"into another folder (--out, or {PREPARED_ROOT_ENV})")
    write_json(out / STARTED, {"settings": settings})


def _remove_partial_files(images: Path) -> None:
    """Temporary files of an interrupted run: the images they were to become are redone."""
    if images.is_dir():
        for partial in images.rglob(".*.tmp"):
            partial.unlink(missing_ok=True)


def _process(faces: list[RawFace], images: Path, size: int, workers: int, progress: bool,
             title: str) -> list[str]:
    chunks = [faces[i:i + CHUNK] for i in range(0, len(faces), CHUNK)]
    outcomes: list[str] = []
    bar = tqdm(total=len(faces), desc=f"prepare {title}", unit="face", disable=not progress)
    with bar:
        for chunk_outcomes in _map(chunks, images, size, workers):
            outcomes.extend(chunk_outcomes)
            bar.update(len(chunk_outcomes))
    return outcomes


def _map(chunks: list[list[RawFace]], images: Path, size: int, workers: int
         ) -> Iterator[list[str]]:
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield prepare_chunk(chunk, images, size)
        return
    # spawn, not fork: the driver process may hold torch's thread pools, which fork breaks.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
        try:
            yield from pool.map(prepare_chunk, chunks, [images] * len(chunks),
                                [size] * len(chunks))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def prepare_chunk(faces: Sequence[RawFace], images: Path, size: int) -> list[str]:
    """Outcome per face: `ok`, `clipped` (written from a clipped box) or why it was skipped."""
    return [prepare_face(face, images, size) for face in faces]


def prepare_face(face: RawFace, images: Path, size: int) -> str:
    target = images / f"{face.key}{SUFFIX}"
    if face.pixels is not None:
        if not _written(target):
            _save(_fer_image(face.pixels), target, size)
        return OK
    assert face.image is not None
    if not face.image.is_file():
        return MISSING
    # Only reading is guarded: a failed write (disk full) must stop the run, not skip the face.
    try:
        with open_image(face.image) as image:
            box, outcome = _check_box(face.box, image.size)
            if box is None or _written(target):
                return outcome
            crop = decode(image, face.image, box)
    except UnreadableImage as err:
        return err.reason
    _save(crop, target, size)
    return outcome


def _written(target: Path) -> bool:
    """An image from an earlier run; an empty file (renamed but lost in a power cut) is not."""
    return target.is_file() and target.stat().st_size > 0


def _fer_image(pixels: str) -> Image.Image:
    side = 48
    values = np.array(pixels.split(), dtype=np.uint8).reshape(side, side)
    return Image.fromarray(values, mode="L")


def _check_box(box: Box | None, image_size: tuple[int, int]) -> tuple[Box | None, str]:
    width, height = image_size
    if box is None:
        return (0, 0, width, height), OK
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        return None, "empty box"
    clipped = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, "box outside the image"
    return clipped, OK if clipped == box else CLIPPED


def _save(image: Image.Image, target: Path, size: int) -> None:
    """Write an 8-bit `L` or `RGB` image (`decode`'s) resized to `size` x `size`."""
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=JPEG_QUALITY)


def _finish(out: Path, settings: dict[str, Any], faces: list[RawFace], outcomes: list[str]
            ) -> PrepareReport:
    kept = [f for f, o in zip(faces, outcomes, strict=True) if o in (OK, CLIPPED)]
    skipped = [(f, o) for f, o in zip(faces, outcomes, strict=True) if o not in (OK, CLIPPED)]
    write_text(out / SKIPPED, _csv(["where", "key", "reason"],
                                   [[f.where, f.key, why] for f, why in skipped]))
    write_text(out / MANIFEST, _csv(["path", "label", "split"],
                                    [[f"{IMAGES}/{f.key}{SUFFIX}", f.label, f.split]
                                     for f in kept]))
    report = PrepareReport(
        out, False, len(faces), len(kept), Counter(why for _, why in skipped),
        outcomes.count(CLIPPED), dict(Counter(f.split for f in kept)),
    )
    write_json(out / RECORD, {
        "settings": settings,
        "faces": report.faces,
        "written": report.written,
        "skipped": dict(report.skipped),
        "clipped": report.clipped,
        "splits": report.split_counts,
        "classes": list(CANONICAL_CLASSES),
        "per_class": {s: np.bincount([f.label for f in kept if f.split == s],
                                     minlength=len(CANONICAL_CLASSES)).tolist()
                      for s in ("train", "test")},
    })
    (out / STARTED).unlink(missing_ok=True)
    return report


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()

