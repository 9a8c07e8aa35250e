"""The synthetic-faces benchmark: layout, determinism, domain contrast, safe rebuilds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clup.data.synthetic import DOMAINS, PROTOTYPES, Actions, Identity, render_face
from clup.data.synthetic.generate import class_counts, generate_domain

SIZES = {"n_train": 21, "n_test": 14}


def _generate(root: Path, domain: str = "studio", seed: int = 3, **sizes: int) -> Path:
    return generate_domain(root, domain, seed=seed, progress=False, **{**SIZES, **sizes})


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _images(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("images/*/*"))}


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_same_seed_gives_identical_bytes(tmp_path: Path, domain: str) -> None:
    first = _generate(tmp_path / "a", domain)
    second = _generate(tmp_path / "b", domain)
    assert first.read_bytes() == second.read_bytes()
    assert _images(first.parent) == _images(second.parent)


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    assert _images(_generate(tmp_path / "a").parent) != _images(
        _generate(tmp_path / "b", seed=4).parent
    )


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_layout_and_labels(tmp_path: Path, domain: str) -> None:
    manifest = _generate(tmp_path / domain, domain)
    root = manifest.parent
    assert manifest == root / "manifest.csv"
    assert manifest.read_text().splitlines()[0] == "path,label,split"
    rows = _rows(manifest)
    assert [r["split"] for r in rows].count("train") == SIZES["n_train"]
    assert [r["split"] for r in rows].count("test") == SIZES["n_test"]
    for row in rows:
        assert row["path"].startswith(f"images/{row['split']}/")
        assert (root / row["path"]).is_file()
        assert 0 <= int(row["label"]) <= 6
    assert {int(r["label"]) for r in rows if r["split"] == "train"} == set(range(7))
    record = json.loads((root / "benchmark.json").read_text())
    assert record["domain"] == domain and record["seed"] == 3
    assert (record["n_train"], record["n_test"]) == (SIZES["n_train"], SIZES["n_test"])
    with Image.open(root / "preview.png") as preview:
        assert preview.height >= 7 * 32


def test_wild_is_small_greyscale_jpeg_and_studio_is_colour(tmp_path: Path) -> None:
    studio = _rows(_generate(tmp_path / "studio", "studio"))[0]["path"]
    wild = _rows(_generate(tmp_path / "wild", "wild"))[0]["path"]
    with Image.open(tmp_path / "studio" / studio) as s, Image.open(tmp_path / "wild" / wild) as w:
        assert s.mode == "RGB" and s.format == "PNG"
        assert w.mode == "L" and w.format == "JPEG"
        assert w.width < s.width and w.height < s.height


def test_wild_class_prior_is_skewed() -> None:
    counts = class_counts(1000, DOMAINS["wild"].class_frequencies)
    assert counts.sum() == 1000
    happiness, fear = counts[3], counts[1]
    assert happiness > 4 * fear
    assert class_counts(7, DOMAINS["wild"].class_frequencies).tolist() == [1] * 7


def test_second_call_returns_without_rendering(tmp_path: Path) -> None:
    manifest = _generate(tmp_path / "d")
    before = {p: p.stat().st_mtime_ns for p in manifest.parent.rglob("*")}
    assert _generate(tmp_path / "d") == manifest
    assert {p: p.stat().st_mtime_ns for p in manifest.parent.rglob("*")} == before


def test_other_parameters_replace_the_folder(tmp_path: Path) -> None:
    _generate(tmp_path / "d")
    manifest = _generate(tmp_path / "d", n_test=7)
    assert len(_rows(manifest)) == SIZES["n_train"] + 7
    assert json.loads((tmp_path / "d" / "benchmark.json").read_text())["n_test"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_partial_folder_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "000000.png").write_bytes(b"truncated")
    (root / "manifest.csv").write_text("path,label,split\n")
    manifest = _generate(root)
    assert len(_rows(manifest)) == SIZES["n_train"] + SIZES["n_test"]
    assert (root / "benchmark.json").is_file()


def test_folder_with_foreign_files_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="thesis.tex"):
        _generate(tmp_path / "d")
    assert (tmp_path / "d" / "thesis.tex").read_text() == "precious"


def test_failed_run_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("clup.data.synthetic.generate.write_preview", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": "lab"}, r"'lab'.*\['studio', 'wild'\]"),
        ({"n_train": 0}, "n_train must be a positive integer, got 0"),
        ({"n_test": -5}, "n_test must be a positive integer, got -5"),
        ({"n_train": 2.5}, "n_train must be a positive integer, got 2.5"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ],
)
def test_bad_request_is_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _generate(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_render_face_is_symmetric_and_expressive() -> None:
    identity = Identity.sample(np.random.default_rng(0))
    neutral = np.asarray(render_face(Actions(), identity), dtype=float)
    assert neutral.shape == (64, 64, 3)
    # A horizontal flip must not change the label, so frontal faces are mirror images.
    assert np.abs(neutral - neutral[:, ::-1]).mean() < 1.0
    for prototype in PROTOTYPES[:-1]:
        expressive = np.asarray(render_face(prototype, identity), dtype=float)
        assert np.abs(expressive - neutral).mean() > 0.5
