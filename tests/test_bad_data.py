"""Bad input in the user's data stops with a sentence naming the file, or is decoded right."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clup.config import CANONICAL_CLASSES, DatasetConfig, experiment_from_dict
from clup.data.datasets import check_exists, read_dataset
from clup.data.images import MAX_PIXELS_VARIABLE, TOO_LARGE, load_image
from clup.data.manifest import read_manifest
from clup.data.prepare import IMAGES, SKIPPED, prepare
from clup.data.raw import get_dataset
from clup.errors import ConfigError, ManifestError
from clup.plan import describe_plan
from tests.conftest import tiny_experiment
from tests.fake_raw import make_fake_expw

CLASSES = list(CANONICAL_CLASSES)
WIDTH = 256
GRADIENT = np.linspace(0, 65535, WIDTH)
"""16-bit values across the width of a test image, 0 to 65535."""
EXPW_LIST = "label/label.lst"
EXPW_PHOTOS = "image/origin"


def _gradient_image(mode: str) -> Image.Image:
    rows = np.tile(GRADIENT, (4, 1))
    if mode == "F":
        return Image.fromarray((rows / 65535).astype(np.float32))
    if mode == "I":
        return Image.fromarray(rows.round().astype(np.int32))
    return Image.frombytes(mode, (WIDTH, 4), rows.round().astype(">u2").tobytes())


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", ".png"), ("I;16B", ".tif"),
                                              ("I", ".tif"), ("F", ".tif")])
def test_deep_grey_images_are_scaled_to_eight_bits_not_clipped(
        tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"gradient{suffix}"
    _gradient_image(mode).save(path)
    pixels = load_image(path).astype(np.int64)
    assert pixels.shape == (4, WIDTH, 3)
    assert (pixels == pixels[..., :1]).all()
    assert np.abs(pixels[0, :, 0] - GRADIENT / 257).max() <= 1


def test_sixteen_bit_colour_follows_its_gradient(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")  # Pillow cannot write 16-bit colour
    channels = np.stack([GRADIENT, GRADIENT / 2, 65535 - GRADIENT], axis=-1)
    cv2.imwrite(str(tmp_path / "colour.png"),
                np.tile(channels, (4, 1, 1)).round().astype(np.uint16)[..., ::-1])
    pixels = load_image(tmp_path / "colour.png").astype(np.int64)
    assert np.abs(pixels[0] - channels / 257).max() <= 1


def _square(path: Path, side: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), 90, np.uint8)).save(path)
    return path


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("limit", [10, 40], ids=["over-twice-the-limit", "over-the-limit"])
def test_an_image_over_the_pixel_limit_names_the_file_and_how_to_raise_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    path = _square(tmp_path / "big.png")  # 64 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    monkeypatch.delenv(MAX_PIXELS_VARIABLE, raising=False)
    message = rf"image {re.escape(str(path))} has more than {limit} pixels.*set the " \
              rf"environment variable {MAX_PIXELS_VARIABLE} to a larger number"
    with pytest.raises(ManifestError, match=message):
        load_image(path)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "64")
    assert load_image(path).shape == (8, 8, 3)


def test_a_pixel_limit_that_is_no_number_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "lots")
    with pytest.raises(ConfigError, match=f"{MAX_PIXELS_VARIABLE} must be a positive whole"):
        load_image(_square(tmp_path / "small.png"))


def _expw_with(raw: Path, photos: dict[str, Image.Image]) -> list[int]:
    """A fake ExpW with extra photos, each listed as one face covering the whole photo;
    their line numbers in the list file."""
    make_fake_expw(raw)
    listed = raw / EXPW_LIST
    first = len(listed.read_text().splitlines()) + 1
    lines = []
    for name, photo in photos.items():
        photo.save(raw / EXPW_PHOTOS / name)
        lines.append(f"{name} 0 0 0 {photo.width} {photo.height} 0.9 3\n")
    with listed.open("a") as handle:
        handle.writelines(lines)
    return list(range(first, first + len(lines)))


def test_prepare_scales_a_sixteen_bit_photo(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    _expw_with(raw, {"deep.png": _gradient_image("I;16")})
    prepare(get_dataset("expw"), raw, out, size=16, workers=1, progress=False)
    key = next(p for p in (out / IMAGES).rglob("deep_0.jpg"))
    with Image.open(key) as image:
        row = np.asarray(image.convert("L"), dtype=np.float64).mean(axis=0)
    assert row[0] < 30 and row[-1] > 225
    assert (np.diff(row) > -4).all()


def test_prepare_skips_and_counts_images_over_the_pixel_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    grey = np.full((60, 60), 90, np.uint8)
    lines = _expw_with(raw, {"huge.png": Image.fromarray(np.tile(grey, (2, 2))),  # 14400 px
                             "large.png": Image.fromarray(grey)})  # 3600 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # the fake photos have 1792
    monkeypatch.delenv(MAX_PIXELS_VARIABLE, raising=False)
    report = prepare(get_dataset("expw"), raw, out, size=16, workers=1, progress=False)
    assert report.skipped == Counter({TOO_LARGE: 2})
    with (out / SKIPPED).open(newline="") as handle:
        listed = [(row["where"], row["reason"]) for row in csv.DictReader(handle)]
    assert listed == [(f"{raw / EXPW_LIST}:{line}", TOO_LARGE) for line in lines]
    assert f"2 {TOO_LARGE}" in report.describe("ExpW")


def _manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data" / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for name in ("a", "b"):
        (path.parent / f"{name}.png").write_bytes(b"")
    return path


@pytest.mark.parametrize(("text", "line", "count"), [
    ("path,label,split\na.png\n", 2, 1),
    ("path,label,split\na.png,1,train,extra\n", 2, 4),
    ("path,label,split\na.png,1,train\n\nb.png,2\n", 4, 2),
])
def test_a_row_with_the_wrong_number_of_fields_names_file_and_line(
        tmp_path: Path, text: str, line: int, count: int) -> None:
    path = _manifest(tmp_path, text)
    message = rf"^{re.escape(str(path))}:{line}: the header path,label,split has 3 fields, " \
              rf"this row has {count};"
    with pytest.raises(ManifestError, match=message):
        read_manifest(path, CLASSES)


def test_a_path_only_manifest_is_unlabelled_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    splits = read_manifest(_manifest(tmp_path, "path\na.png\n\nb.png\n\n"), CLASSES)
    assert len(splits["train"]) == 2 and not splits["train"].has_labels


def test_a_header_only_manifest_says_it_lists_no_images(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label,split\n")
    with pytest.raises(ManifestError, match=re.escape(f"manifest {path} lists no images")):
        read_manifest(path, CLASSES)


def test_the_dry_run_says_an_empty_target_lists_no_images_not_to_lower_k(
        tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label\n")
    experiment = tiny_experiment(tmp_path)
    experiment["target"] = {"kind": "manifest", "path": str(path)}
    with pytest.raises(ManifestError, match=re.escape(f"manifest {path} lists no images")):
        describe_plan(experiment_from_dict(experiment), gpus=[], cpu_threads=2)


def test_class_folders_without_images_say_they_hold_none(tmp_path: Path) -> None:
    for name in ("Happiness", "Sadness"):
        (tmp_path / "faces" / "train" / name).mkdir(parents=True)
        (tmp_path / "faces" / "train" / name / "notes.txt").write_text("no image")
    with pytest.raises(ManifestError, match=r"class-folder dataset .*faces holds no image"):
        read_dataset(DatasetConfig(kind="folders", path=str(tmp_path / "faces")), CLASSES)


def _class_folders(root: Path, train: str = "train", test: str = "test") -> Path:
    for split in (train, test):
        for name in ("Happiness", "Sadness"):
            _square(root / split / name / "0.png")
    return root


@pytest.mark.parametrize(("train", "test"), [("Train", "Test"), ("TRAIN", "test")])
def test_split_folders_are_matched_whatever_their_case(
        tmp_path: Path, train: str, test: str) -> None:
    root = _class_folders(tmp_path / "faces", train, test)
    splits = read_dataset(DatasetConfig(kind="folders", path=str(root)), CLASSES)
    assert sorted(splits["train"].labels.tolist()) == [3, 4]
    assert sorted(splits["test"].labels.tolist()) == [3, 4]


def test_two_train_folders_differing_in_case_stop(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "faces")
    _square(root / "Train" / "Happiness" / "1.png")
    if (root / "train" / "Happiness" / "1.png").is_file():
        pytest.skip("the file system ignores case")
    with pytest.raises(ManifestError, match=r"faces has two train folders, Train and train"):
        read_dataset(DatasetConfig(kind="folders", path=str(root)), CLASSES)


@pytest.mark.parametrize(("layout", "advice"), [
    ("classes", "its sub-folders hold images: for a folder per class set `kind: folders`, "
                "for unlabelled images `kind: images`"),
    ("images", "it holds images: for unlabelled images set `kind: images`"),
    ("manifest", "it holds manifest.csv: give that file as the path"),
], ids=["classes", "images", "manifest"])
def test_a_folder_given_as_a_manifest_is_called_a_folder(
        tmp_path: Path, layout: str, advice: str) -> None:
    root = tmp_path / "faces"
    if layout == "classes":
        _class_folders(root)
    elif layout == "images":
        _square(root / "0.png")
    else:
        root = _manifest(tmp_path, "path\na.png\n").parent
    config = DatasetConfig(kind="manifest", path=str(root))
    message = rf"^target\.path: {re.escape(str(root))} is a folder, but a manifest is a CSV " \
              rf"file .*; {re.escape(advice)}$"
    with pytest.raises(ManifestError, match=message):
        check_exists(config, "target")
    with pytest.raises(ManifestError, match=re.escape(f"{root} is a folder")):
        read_dataset(config, CLASSES)
