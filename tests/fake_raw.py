"""Tiny fake copies of each raw dataset in its native layout, with what a reader must return.

The id tables below are docs/datasets.md written out by hand, apart from the readers'
own tables, so a reader with a wrong mapping fails the tests. Every face shows its
canonical class the same way in every dataset (a colour and a stripe frequency per
class, plus noise), so a model trained on one fake can be checked on another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CANONICAL = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
RAFDB_IDS = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger",
             7: "Neutral"}
FER2013_IDS = {0: "Anger", 1: "Disgust", 2: "Fear", 3: "Happiness", 4: "Sadness", 5: "Surprise",
               6: "Neutral"}
EXPW_IDS = FER2013_IDS
AFE_IDS = {0: "Anger", 1: "Disgust", 2: "Fear", 3: "Happiness", 4: "Neutral", 5: "Sadness",
           6: "Surprise"}
PALETTE = np.array([(230, 200, 40), (40, 40, 200), (40, 160, 40), (250, 140, 170),
                    (110, 110, 140), (210, 40, 40), (160, 160, 160)], dtype=np.float32)
EXPW_TEST_FRACTION = 0.2
_GREY_TEXT = [str(value) for value in range(256)]

Box = tuple[int, int, int, int]


@dataclass(frozen=True, order=True)
class Expected:
    """What a reader must return for one fake face."""

    key: str
    split: str
    label: int
    box: Box | None = None


def canonical(table: dict[int, str], raw_id: int) -> int:
    return CANONICAL.index(table[raw_id])


def make_fake_rafdb(root: Path, per_label: int = 1, size: int = 24, seed: int = 0
                    ) -> list[Expected]:
    """RAF-DB's basic part with `per_label` aligned faces per id and split, lines shuffled."""
    rng = np.random.default_rng(seed)
    raw_ids = np.tile(sorted(RAFDB_IDS), per_label)
    labels = [canonical(RAFDB_IDS, raw) for raw in raw_ids]
    lines, expected = [], []
    for split, digits in (("train", 5), ("test", 4)):
        stems = [f"{split}_{number:0{digits}d}" for number in range(1, len(raw_ids) + 1)]
        for stem, image in zip(stems, face_pixels(labels, size, size, rng), strict=True):
            _save(image, root / "basic/Image/aligned" / f"{stem}_aligned.jpg")
        lines += [f"{stem}.jpg {raw}" for stem, raw in zip(stems, raw_ids, strict=True)]
        expected += [Expected(f"{split}/{stem}", split, label)
                     for stem, label in zip(stems, labels, strict=True)]
    _write_lines(root / "basic/EmoLabel/list_patition_label.txt", list(rng.permutation(lines)))
    return expected


def make_fake_fer2013(root: Path, per_label: int = 1, seed: int = 0) -> list[Expected]:
    """fer2013.csv with `per_label` rows per id and split; test rows alternate Public/Private."""
    rng = np.random.default_rng(seed)
    raw_ids = np.tile(sorted(FER2013_IDS), per_label)
    usages = ["Training"] * len(raw_ids) + [
        ("PublicTest", "PrivateTest")[i % 2] for i in range(len(raw_ids))]
    raw_ids = np.concatenate([raw_ids, raw_ids])
    labels = [canonical(FER2013_IDS, raw) for raw in raw_ids]
    grey = face_pixels(labels, 48, 48, rng, grey=True)
    rows = [f"{raw},{' '.join(map(_GREY_TEXT.__getitem__, image.ravel().tolist()))},{usage}"
            for raw, image, usage in zip(raw_ids, grey, usages, strict=True)]
    _write_lines(root / "fer2013.csv", ["emotion,pixels,Usage", *rows])
    splits = ["train" if usage == "Training" else "test" for usage in usages]
    return [Expected(f"{split}/{line:05d}", split, label)
            for line, split, label in zip(range(2, len(rows) + 2), splits, labels, strict=True)]


def make_fake_expw(root: Path, photos: int = 30, faces_per_photo: int = 2, face_size: int = 16,
                   split_seed: int = 0, seed: int = 0) -> list[Expected]:
    """ExpW photos with `faces_per_photo` faces side by side; ids cycle over all faces."""
    if photos * faces_per_photo < len(EXPW_IDS):
        raise ValueError(f"{photos} photos of {faces_per_photo} faces cannot hold every id")
    rng = np.random.default_rng(seed)
    raw_ids = np.arange(photos * faces_per_photo) % len(EXPW_IDS)
    labels = [canonical(EXPW_IDS, raw) for raw in raw_ids]
    faces = face_pixels(labels, face_size, face_size, rng).reshape(
        photos, faces_per_photo, face_size, face_size, 3)
    margin = face_size // 2
    height, width = face_size + 2 * margin, faces_per_photo * (face_size + margin) + margin
    lines, expected = [], []
    for index in range(photos):
        name = f"fake_{index:05d}.jpg"
        split = "test" if _expw_in_test(name, split_seed) else "train"
        photo = rng.normal(128, 30, (height, width, 3))
        for face_id in range(faces_per_photo):
            top = int(rng.integers(0, margin + 1))
            left = margin + face_id * (face_size + margin)
            box = (left, top, left + face_size, top + face_size)
            photo[top:top + face_size, left:left + face_size] = faces[index, face_id]
            raw = raw_ids[index * faces_per_photo + face_id]
            lines.append(f"{name} {face_id} {top} {left} {box[2]} {box[3]} "
                         f"{rng.uniform(0.5, 1):.4f} {raw}")
            expected.append(Expected(f"{split}/{Path(name).stem}_{face_id}", split,
                                     canonical(EXPW_IDS, raw), box))
        _save(photo, root / "image/origin" / name)
    _write_lines(root / "label/label.lst", lines)
    if {e.split for e in expected} != {"train", "test"}:
        raise ValueError(f"{photos} photos with split seed {split_seed} fill one split only")
    return expected


def make_fake_afe(root: Path, per_label: int = 1, size: int = 40, face_size: int = 24,
                  films: tuple[str, ...] = ("film_a", "film_b"), seed: int = 0
                  ) -> list[Expected]:
    """AFE frames under `src/image/<film>/`, `per_label` faces per id and split at random boxes."""
    rng = np.random.default_rng(seed)
    raw_ids = np.tile(sorted(AFE_IDS), per_label)
    labels = [canonical(AFE_IDS, raw) for raw in raw_ids]
    expected, number = [], 0
    for split, list_name in (("train", "Train.csv"), ("test", "Test.csv")):
        lines = []
        for raw, label, face in zip(raw_ids, labels, face_pixels(labels, face_size, face_size, rng),
                                    strict=True):
            number += 1
            path = f"{films[number % len(films)]}/{number:04d}"
            left, top = (int(v) for v in rng.integers(0, size - face_size + 1, 2))
            box = (left, top, left + face_size, top + face_size)
            frame = rng.normal(128, 30, (size, size, 3))
            frame[top:box[3], left:box[2]] = face
            _save(frame, root / "src/image" / f"{path}.jpg")
            lines.append(f"{path}.jpg {' '.join(map(str, box))} {raw}")
            key = f"{split}/{path}_{'_'.join(map(str, box))}"
            expected.append(Expected(key, split, label, box))
        _write_lines(root / "annos/TrainTest" / list_name, lines)
    return expected


def face_pixels(labels: list[int], height: int, width: int, rng: np.random.Generator,
                grey: bool = False) -> np.ndarray:
    """Faces, one per canonical label: the class colour striped at a class frequency, plus noise.

    RGB `(n, height, width, 3)`, or `(n, height, width)` with `grey` (the colour's mean).
    """
    classes = np.asarray(labels)[:, None, None]
    x = np.arange(width)[None, None, :]
    stripes = 0.55 + 0.45 * (0.5 + 0.5 * np.sin(2 * np.pi * (classes + 1) * x / width))
    shade = np.broadcast_to(stripes, (len(labels), height, width))
    faces = shade * PALETTE.mean(axis=1)[classes] if grey else shade[..., None] * PALETTE[classes]
    noise = rng.normal(0, 12, faces.shape).astype(np.float32)
    return np.clip(faces + noise, 0, 255).astype(np.uint8)


def _expw_in_test(image_name: str, split_seed: int) -> bool:
    """ExpW's split rule, restated from the brief so the reader is checked against it."""
    digest = hashlib.sha256(f"{split_seed}:{image_name}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64 < EXPW_TEST_FRACTION


def _save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
