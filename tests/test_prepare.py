import csv
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import clup.data.prepare as prepare_module
from clup.config import CANONICAL_CLASSES
from clup.data.manifest import read_manifest
from clup.data.prepare import (
    IMAGES,
    MANIFEST,
    RECORD,
    SKIPPED,
    STARTED,
    PrepareReport,
    prepare,
)
from clup.data.raw import get_dataset
from clup.errors import ClupError, ManifestError
from tests.fake_raw import (
    Expected,
    make_fake_afe,
    make_fake_expw,
    make_fake_fer2013,
    make_fake_rafdb,
)

SIZE = 16
BUILDERS: dict[str, Callable[..., list[Expected]]] = {
    "rafdb": make_fake_rafdb,
    "fer2013": make_fake_fer2013,
    "expw": make_fake_expw,
    "afe": make_fake_afe,
}
EXPW_LIST = "label/label.lst"
EXPW_PHOTOS = "image/origin"
RAFDB_LIST = "basic/EmoLabel/list_patition_label.txt"

Snapshot = dict[str, tuple[int, int]]


def _prepare(name: str, root: Path, out: Path, **options: Any) -> PrepareReport:
    settings: dict[str, Any] = {"size": SIZE, "workers": 1, "progress": False, **options}
    return prepare(get_dataset(name), root, out, **settings)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / MANIFEST).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _by_key(out: Path) -> dict[str, dict[str, str]]:
    prefix, suffix = f"{IMAGES}/", ".jpg"
    rows = _rows(out)
    assert all(r["path"].startswith(prefix) and r["path"].endswith(suffix) for r in rows)
    return {r["path"][len(prefix):-len(suffix)]: r for r in rows}


def _skipped(out: Path) -> list[dict[str, str]]:
    with (out / SKIPPED).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _snapshot(folder: Path) -> Snapshot:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_ino)
            for p in folder.rglob("*") if p.is_file()}


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _resized(image: Image.Image) -> np.ndarray:
    return _pixels(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def _error(prepared: np.ndarray, reference: Image.Image) -> float:
    return float(np.abs(prepared - _resized(reference)).mean())


def _append_lines(path: Path, lines: list[str]) -> list[int]:
    """Append `lines` to a list file; return their line numbers."""
    first = len(path.read_text().splitlines()) + 1
    with path.open("a") as handle:
        handle.writelines(f"{line}\n" for line in lines)
    return list(range(first, first + len(lines)))


def _expw_line(photo: str, face_id: int, box: tuple[int, int, int, int], raw_id: int = 3
               ) -> str:
    left, top, right, bottom = box
    return f"{photo} {face_id} {top} {left} {right} {bottom} 0.9 {raw_id}"


def _expw_photo_of(key: str) -> str:
    return key.split("/", 1)[1].rsplit("_", 1)[0]


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    """Let `saves` images be written, then stop in the middle of writing the next one."""
    original = Image.Image.save
    calls = {"n": 0}

    def save(image: Image.Image, target: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > saves:
            Path(target).write_bytes(b"\xff\xd8\xff half a jpeg")
            raise KeyboardInterrupt
        original(image, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def _interrupted_run(monkeypatch: pytest.MonkeyPatch, root: Path, out: Path, saves: int
                     ) -> None:
    with monkeypatch.context() as patch:
        _interrupt_after(patch, saves)
        with pytest.raises(KeyboardInterrupt):
            _prepare("rafdb", root, out)


def _forbid_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("prepare_face was called on a prepared folder")

    monkeypatch.setattr(prepare_module, "prepare_face", fail)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_prepare_writes_every_face_with_its_label_and_split(tmp_path: Path, name: str) -> None:
    expected = BUILDERS[name](tmp_path / "raw")
    out = tmp_path / "prepared"
    report = _prepare(name, tmp_path / "raw", out)
    assert not report.already_done
    assert report.faces == report.written == len(expected)
    assert not report.skipped and report.clipped == 0
    assert (out / MANIFEST).read_text().splitlines()[0] == "path,label,split"
    rows = _by_key(out)
    assert len(_rows(out)) == len(rows) == len(expected)
    assert {e.key: (str(e.label), e.split) for e in expected} == {
        key: (row["label"], row["split"]) for key, row in rows.items()}
    for row in rows.values():
        with Image.open(out / row["path"]) as image:
            assert image.size == (SIZE, SIZE)
    tables = read_manifest(out / MANIFEST, list(CANONICAL_CLASSES), CANONICAL_CLASSES)
    assert sum(len(t) for t in tables.values()) == len(expected)
    assert set(np.concatenate([t.labels for t in tables.values()]).tolist()) == set(range(7))
    assert report.split_counts == dict(Counter(e.split for e in expected))
    assert (out / RECORD).is_file() and not (out / STARTED).exists()
    assert _skipped(out) == []
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.parametrize("name", ["expw", "afe"])
def test_prepared_face_is_the_box_content_not_the_whole_photo(tmp_path: Path, name: str
                                                              ) -> None:
    expected = BUILDERS[name](tmp_path / "raw")
    out = tmp_path / "prepared"
    _prepare(name, tmp_path / "raw", out)
    sources = {f.key: f.image for f in get_dataset(name).read(tmp_path / "raw")}
    for face in expected:
        assert face.box is not None
        with Image.open(out / IMAGES / f"{face.key}.jpg") as image:
            prepared = _pixels(image)
        with Image.open(sources[face.key]) as photo:
            box_error, photo_error = _error(prepared, photo.crop(face.box)), _error(prepared, photo)
        assert box_error < 10 and box_error * 3 < photo_error


def test_box_partly_outside_the_photo_is_clipped_and_counted(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    expected = make_fake_expw(raw)
    split = next(e.split for e in expected if e.key.endswith("/fake_00000_0"))
    _append_lines(raw / EXPW_LIST, [_expw_line("fake_00000.jpg", 9, (-6, -4, 12, 14))])
    report = _prepare("expw", raw, out)
    assert report.clipped == 1 and report.written == len(expected) + 1
    assert "clipped" in report.describe("ExpW")
    key = f"{split}/fake_00000_9"
    assert _by_key(out)[key]["split"] == split
    with Image.open(out / IMAGES / f"{key}.jpg") as image:
        prepared = _pixels(image)
    with Image.open(raw / EXPW_PHOTOS / "fake_00000.jpg") as photo:
        assert _error(prepared, photo.crop((0, 0, 12, 14))) < 10


def test_second_prepare_is_already_done_and_rewrites_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_fake_afe(raw)
    first = _prepare("afe", raw, out)
    before = _snapshot(out)
    _forbid_writing(monkeypatch)
    again = _prepare("afe", raw, out)
    assert again.already_done
    assert (again.faces, again.written) == (first.faces, first.written)
    assert "already prepared" in again.describe("AFE")
    assert _snapshot(out) == before


def test_interrupted_prepare_leaves_only_complete_images_and_no_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_fake_rafdb(raw)
    _interrupted_run(monkeypatch, raw, out, saves=5)
    images = [p for p in (out / IMAGES).rglob("*") if p.is_file()]
    assert len(images) == 5 and all(p.suffix == ".jpg" for p in images)
    assert not list(out.rglob("*.tmp"))
    for path in images:
        with Image.open(path) as image:
            image.load()
    assert not (out / RECORD).exists() and not (out / MANIFEST).exists()
    assert (out / STARTED).is_file()


def test_rerun_after_an_interruption_completes_without_redoing_written_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    expected = make_fake_rafdb(raw)
    _interrupted_run(monkeypatch, raw, out, saves=5)
    first_images = _snapshot(out / IMAGES)
    leftover = out / IMAGES / "train" / ".x.jpg.abc.tmp"
    leftover.write_bytes(b"killed mid-write")
    report = _prepare("rafdb", raw, out)
    assert not report.already_done and report.written == len(expected)
    assert not leftover.exists() and not list(out.rglob("*.tmp"))
    after = _snapshot(out / IMAGES)
    assert {p: after[p] for p in first_images} == first_images
    assert len(after) == len(expected)
    assert not (out / STARTED).exists() and (out / RECORD).is_file()
    _prepare("rafdb", raw, tmp_path / "uninterrupted")
    assert (out / MANIFEST).read_text() == (tmp_path / "uninterrupted" / MANIFEST).read_text()


def test_bad_faces_are_skipped_counted_and_listed_with_file_and_line(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    expected = make_fake_expw(raw)
    photos = raw / EXPW_PHOTOS
    whole = (photos / "fake_00000.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (photos / "text.jpg").write_bytes(b"this is not an image\n")
    lines = _append_lines(raw / EXPW_LIST, [
        _expw_line("absent.jpg", 0, (0, 0, 8, 8)),
        _expw_line("truncated.jpg", 0, (0, 0, 8, 8)),
        _expw_line("text.jpg", 0, (0, 0, 8, 8)),
        _expw_line("fake_00000.jpg", 7, (200, 200, 220, 220)),
        _expw_line("fake_00000.jpg", 8, (10, 2, 10, 12)),
    ])
    reasons = ["missing image", "unreadable image", "unreadable image", "box outside the image",
               "empty box"]
    report = _prepare("expw", raw, out)
    assert report.skipped == Counter(reasons)
    assert report.faces == len(expected) + 5 and report.written == len(expected)
    assert set(_by_key(out)) == {e.key for e in expected}
    listed = _skipped(out)
    assert [(r["where"], r["reason"]) for r in listed] == [
        (f"{raw / EXPW_LIST}:{line}", why) for line, why in zip(lines, reasons, strict=True)]
    text = report.describe("ExpW")
    assert "skipped 5" in text and str(out / SKIPPED) in text


def test_folder_not_made_by_clup_is_refused(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_fake_rafdb(raw)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match="not made by clup"):
        _prepare("rafdb", raw, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_other_size_in_a_prepared_folder_is_refused(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_fake_rafdb(raw)
    _prepare("rafdb", raw, out)
    with pytest.raises(ManifestError, match="other settings"):
        _prepare("rafdb", raw, out, size=SIZE + 8)


def test_other_size_in_an_interrupted_folder_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_fake_rafdb(raw)
    _interrupted_run(monkeypatch, raw, out, saves=2)
    with pytest.raises(ManifestError, match="other settings"):
        _prepare("rafdb", raw, out, size=SIZE + 8)


def test_changed_list_file_counts_as_other_settings(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_fake_rafdb(raw)
    _prepare("rafdb", raw, out)
    listing = raw / RAFDB_LIST
    lines = listing.read_text().splitlines()
    name, label = lines[0].split()
    lines[0] = f"{name} {int(label) % 7 + 1}"
    listing.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(ManifestError, match="other settings"):
        _prepare("rafdb", raw, out)


def test_size_below_eight_is_refused(tmp_path: Path) -> None:
    make_fake_rafdb(tmp_path / "raw")
    with pytest.raises(ManifestError, match="at least 8"):
        _prepare("rafdb", tmp_path / "raw", tmp_path / "prepared", size=7)
    assert not (tmp_path / "prepared").exists()


def test_two_workers_give_the_same_prepared_copy_as_one(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    expected = make_fake_rafdb(raw, per_label=5, size=16)
    assert len(expected) > prepare_module.CHUNK
    one, two = tmp_path / "one", tmp_path / "two"
    _prepare("rafdb", raw, one)
    report = _prepare("rafdb", raw, two, workers=2)
    assert report.written == len(expected)
    assert (two / MANIFEST).read_text() == (one / MANIFEST).read_text()
    for row in _rows(one):
        assert (two / row["path"]).read_bytes() == (one / row["path"]).read_bytes()


def test_expw_split_is_stable_per_seed_and_keeps_each_photo_in_one_split(
        tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_fake_expw(raw)
    _prepare("expw", raw, tmp_path / "a", split_seed=3)
    _prepare("expw", raw, tmp_path / "b", split_seed=3)
    _prepare("expw", raw, tmp_path / "c", split_seed=4)
    manifest = (tmp_path / "a" / MANIFEST).read_text()
    assert (tmp_path / "b" / MANIFEST).read_text() == manifest
    splits: dict[str, dict[str, set[str]]] = {}
    for seed in ("a", "c"):
        photos: dict[str, set[str]] = defaultdict(set)
        for key, row in _by_key(tmp_path / seed).items():
            photos[_expw_photo_of(key)].add(row["split"])
        assert all(len(found) == 1 for found in photos.values())
        splits[seed] = dict(photos)
    assert splits["a"] != splits["c"]
    assert set(splits["a"]) == set(splits["c"])



def test_write_error_stops_the_run_instead_of_skipping_the_face(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_fake_afe(raw)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(ClupError, match="No space left.*a rerun continues"):
        _prepare("afe", raw, out)
    assert not (out / RECORD).exists() and (out / STARTED).is_file()
