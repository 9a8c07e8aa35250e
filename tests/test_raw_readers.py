import random
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from clup.config import CANONICAL_CLASSES
from clup.data.raw import DATASETS, MissingDataset, RawFace, get_dataset
from clup.errors import ConfigError, ManifestError
from tests.fake_raw import (
    CANONICAL,
    Expected,
    make_fake_afe,
    make_fake_expw,
    make_fake_fer2013,
    make_fake_rafdb,
)

BUILDERS: dict[str, Callable[..., list[Expected]]] = {
    "rafdb": make_fake_rafdb,
    "fer2013": make_fake_fer2013,
    "expw": make_fake_expw,
    "afe": make_fake_afe,
}
LISTS = {
    "rafdb": "basic/EmoLabel/list_patition_label.txt",
    "fer2013": "fer2013.csv",
    "expw": "label/label.lst",
    "afe_train": "annos/TrainTest/Train.csv",
    "afe_test": "annos/TrainTest/Test.csv",
}
PIXELS = " ".join(["7"] * 2304)


def _as_expected(faces: list[RawFace]) -> list[Expected]:
    return sorted(Expected(face.key, face.split, face.label, face.box) for face in faces)


def _append(path: Path, line: str) -> int:
    """Add a blank line then `line`; return the number of `line`, blank lines counted."""
    text = path.read_text()
    path.write_text(f"{text}\n{line}\n")
    return text.count("\n") + 2


def test_fake_tables_use_the_canonical_order() -> None:
    assert CANONICAL == CANONICAL_CLASSES


@pytest.mark.parametrize(
    ("name", "options"),
    [("rafdb", {"per_label": 2}), ("fer2013", {"per_label": 2}), ("expw", {}),
     ("afe", {"per_label": 2})],
)
def test_reading_a_fake_copy_gives_exactly_its_faces(
        tmp_path: Path, name: str, options: dict[str, int]) -> None:
    expected = BUILDERS[name](tmp_path, **options)
    faces = DATASETS[name].read(tmp_path)
    assert _as_expected(faces) == sorted(expected)
    assert len({face.key for face in faces}) == len(faces)
    for split in ("train", "test"):
        labels = {face.label for face in faces if face.split == split}
        assert labels == set(range(7)) or name == "expw"
    assert {face.label for face in faces} == set(range(7))


@pytest.mark.parametrize("name", ["rafdb", "expw", "afe"])
def test_images_are_real_files_holding_their_boxes(tmp_path: Path, name: str) -> None:
    BUILDERS[name](tmp_path)
    for face in DATASETS[name].read(tmp_path):
        assert face.image is not None and face.image.is_relative_to(tmp_path.resolve())
        with Image.open(face.image) as image:
            assert image.format == "JPEG"
            width, height = image.size
        if face.box is not None:
            left, top, right, bottom = face.box
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            assert (right - left, bottom - top) != (width, height)


def test_rafdb_names_the_aligned_image(tmp_path: Path) -> None:
    make_fake_rafdb(tmp_path)
    faces = {face.key: face for face in DATASETS["rafdb"].read(tmp_path)}
    face = faces["train/train_00001"]
    assert face.image == (tmp_path / "basic/Image/aligned/train_00001_aligned.jpg").resolve()
    assert face.box is None
    assert face.where.startswith(f"{tmp_path / LISTS['rafdb']}:")


def test_blank_lines_and_crlf_change_nothing_but_line_numbers(tmp_path: Path) -> None:
    expected = make_fake_rafdb(tmp_path)
    path = tmp_path / LISTS["rafdb"]
    lines = path.read_text().splitlines()
    path.write_text("\r\n".join(["", *lines[:3], "  ", *lines[3:]]) + "\r\n")
    faces = DATASETS["rafdb"].read(tmp_path)
    assert _as_expected(faces) == sorted(expected)
    assert faces[0].where == f"{path}:2"
    assert faces[3].where == f"{path}:6"


def test_fer2013_keeps_pixels_and_numbers_keys_by_line(tmp_path: Path) -> None:
    make_fake_fer2013(tmp_path)
    path = tmp_path / LISTS["fer2013"]
    path.write_text(path.read_text().replace("emotion,pixels,Usage", "emotion, pixels,Usage ", 1))
    faces = DATASETS["fer2013"].read(tmp_path)
    assert [face.key for face in faces[:2]] == ["train/00002", "train/00003"]
    assert faces[0].where == f"{path}:2"
    assert all(face.image is None and len(face.pixels.split()) == 2304 for face in faces)
    assert {face.key.split("/")[0] for face in faces[-7:]} == {"test"}


def test_afe_paths_may_hold_spaces_and_folders(tmp_path: Path) -> None:
    expected = make_fake_afe(tmp_path, films=("film a", "film b"))
    faces = DATASETS["afe"].read(tmp_path)
    assert _as_expected(faces) == sorted(expected)
    assert any(face.key.startswith("train/film a/") for face in faces)
    assert all(face.image.is_file() for face in faces)


def _expw_splits(root: Path, split_seed: int = 0) -> dict[str, str]:
    faces = DATASETS["expw"].read(root, split_seed=split_seed)
    return {face.key.split("/", 1)[1]: face.split for face in faces}


def test_expw_splits_whole_photos_about_one_in_five_to_test(tmp_path: Path) -> None:
    make_fake_expw(tmp_path, photos=400, faces_per_photo=3)
    photos: dict[Path, set[str]] = defaultdict(set)
    for face in DATASETS["expw"].read(tmp_path):
        photos[face.image].add(face.split)
    assert all(len(splits) == 1 for splits in photos.values())
    in_test = sum(splits == {"test"} for splits in photos.values())
    assert 0.12 < in_test / len(photos) < 0.28


def test_expw_split_is_stable_seeded_and_independent_of_line_order(tmp_path: Path) -> None:
    make_fake_expw(tmp_path, photos=200)
    splits = _expw_splits(tmp_path)
    assert _expw_splits(tmp_path) == splits
    other_seed = _expw_splits(tmp_path, split_seed=1)
    assert other_seed.keys() == splits.keys() and other_seed != splits
    path = tmp_path / LISTS["expw"]
    lines = path.read_text().splitlines()
    random.Random(0).shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    assert _expw_splits(tmp_path) == splits


BAD_LINES = [
    ("rafdb", "rafdb", "train_09999.jpg", "expected 2 fields (image_name label), got 1"),
    ("rafdb", "rafdb", "train_09999.jpg 1 2", "expected 2 fields (image_name label), got 3"),
    ("rafdb", "rafdb", "train_09999.jpg happy", "label must be an integer, got 'happy'"),
    ("rafdb", "rafdb", "train_09999.jpg 8", "label id 8 is not one of this dataset's ids"),
    ("rafdb", "rafdb", "train_09999.jpg 0", "label id 0 is not one of this dataset's ids"),
    ("rafdb", "rafdb", "val_00001.jpg 1", "must start with train_ or test_"),
    ("rafdb", "rafdb", "train_/../../../x.jpg 1", "escapes the dataset folder"),
    ("fer2013", "fer2013", f"3,{PIXELS}", "expected 3 fields as in the header, got 2"),
    ("fer2013", "fer2013", "3,1 2 3,Training", "pixels must be 2304 integers 0..255"),
    ("fer2013", "fer2013", f"3,{PIXELS[2:]},Training", "got 2303 values"),
    ("fer2013", "fer2013", f"3,256 {PIXELS[2:]},Training", "got the value '256'"),
    ("fer2013", "fer2013", f"3,{PIXELS[:-1]}7.5,Training", "got the value '7.5'"),
    ("fer2013", "fer2013", f"7,{PIXELS},Training", "label id 7 is not one of"),
    ("fer2013", "fer2013", f"-1,{PIXELS},Training", "label id -1 is not one of"),
    ("fer2013", "fer2013", f"x,{PIXELS},Training", "emotion must be an integer, got 'x'"),
    ("fer2013", "fer2013", f"3,{PIXELS},Validation",
     "Usage must be one of Training, PublicTest, PrivateTest, got 'Validation'"),
    ("expw", "expw", "a.jpg 0 1 2 3 4 0.9", "expected 8 fields (image_name face_id_in_image"),
    ("expw", "expw", "a.jpg 0 1 2 3 4 0.9 3 1", "got 9"),
    ("expw", "expw", "a.jpg 0 1 2 3 4 0.9 7", "label id 7 is not one of"),
    ("expw", "expw", "a.jpg 0 1 2 3 4 sure 3", "face_box_confidence must be a number, got 'sure'"),
    ("expw", "expw", "a.jpg 0 1.5 2 3 4 0.9 3", "face_box_top must be an integer, got '1.5'"),
    ("expw", "expw", "a.jpg x 1 2 3 4 0.9 3", "face_id_in_image must be an integer, got 'x'"),
    ("expw", "expw", "../x.jpg 0 1 2 3 4 0.9 3", "path '../x.jpg' escapes the dataset folder"),
    ("afe", "afe_train", "film_a/x.jpg 1 2 3 4", "expected 6 fields (path left top right"),
    ("afe", "afe_test", "film_a/x.jpg 1 2 3 4 7", "label id 7 is not one of"),
    ("afe", "afe_train", "film_a/x.jpg 1 two 3 4 5", "top must be an integer, got 'two'"),
    ("afe", "afe_test", "../x.jpg 1 2 3 4 5", "path '../x.jpg' escapes the dataset folder"),
]


@pytest.mark.parametrize(("name", "list_file", "line", "message"), BAD_LINES)
def test_bad_lines_stop_with_file_and_line(
        tmp_path: Path, name: str, list_file: str, line: str, message: str) -> None:
    BUILDERS[name](tmp_path)
    path = tmp_path / LISTS[list_file]
    number = _append(path, line)
    pattern = f"{re.escape(f'{path}:{number}: ')}.*{re.escape(message)}"
    with pytest.raises(ManifestError, match=pattern):
        DATASETS[name].read(tmp_path)


@pytest.mark.parametrize(("name", "list_file"),
                         [("rafdb", "rafdb"), ("expw", "expw"), ("afe", "afe_train")])
def test_a_face_listed_twice_names_both_lines(tmp_path: Path, name: str, list_file: str) -> None:
    BUILDERS[name](tmp_path)
    path = tmp_path / LISTS[list_file]
    number = _append(path, path.read_text().splitlines()[0])
    with pytest.raises(ManifestError, match=re.escape(f"{path}:{number}: ") + ".*listed again; "
                       + re.escape(f"it was already listed at {path}:1")):
        DATASETS[name].read(tmp_path)


def test_fer2013_header_without_a_column_stops_at_line_1(tmp_path: Path) -> None:
    make_fake_fer2013(tmp_path)
    path = tmp_path / LISTS["fer2013"]
    path.write_text(path.read_text().replace("emotion,pixels,Usage", "emotion,pixel,Usage", 1))
    with pytest.raises(ManifestError, match=re.escape(f"{path}:1: ") + ".*lacks pixels"):
        DATASETS["fer2013"].read(tmp_path)


def test_fer2013_broken_csv_is_named(tmp_path: Path) -> None:
    make_fake_fer2013(tmp_path, per_label=3)
    path = tmp_path / LISTS["fer2013"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '3,"1 2,Training', *lines[1:]]) + "\n")
    with pytest.raises(ManifestError, match=re.escape(f"{path}:") + r"\d+: not valid CSV"):
        DATASETS["fer2013"].read(tmp_path)


def test_a_list_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    make_fake_rafdb(tmp_path)
    path = tmp_path / LISTS["rafdb"]
    path.write_bytes(b"train_00001.jpg \xff\n")
    with pytest.raises(ManifestError, match=re.escape(f"{path}: expected UTF-8")):
        DATASETS["rafdb"].read(tmp_path)


@pytest.mark.parametrize("name", list(DATASETS))
def test_an_empty_folder_says_what_is_expected_and_where_to_get_it(
        tmp_path: Path, name: str) -> None:
    dataset = DATASETS[name]
    for check in (dataset.check_layout, dataset.read):
        with pytest.raises(MissingDataset) as error:
            check(tmp_path)
        message = str(error.value)
        for part in (dataset.title, str(tmp_path), dataset.contents, dataset.obtain,
                     *dataset.required):
            assert part in message
    with pytest.raises(MissingDataset, match="does not exist"):
        dataset.check_layout(tmp_path / "absent")


def test_get_dataset_by_name_or_lists_the_names() -> None:
    assert [get_dataset(name).name for name in DATASETS] == ["afe", "rafdb", "expw", "fer2013"]
    with pytest.raises(ConfigError, match="unknown dataset 'raf'; accepted: afe, rafdb, expw, "
                                          "fer2013"):
        get_dataset("raf")
