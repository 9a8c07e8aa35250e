"""Write a domain of the synthetic benchmark to disk in the generic manifest layout.

The output is read back exactly like a user's own data (`manifest.csv` with
`path,label,split`), so the demo exercises the same code path as real use. A
folder is trusted only once it is complete: it is built beside its final
place and moved in with one `os.replace`, and `benchmark.json` records what
was asked for, so a rerun with the same request returns at once and a
different request rebuilds.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import multiprocessing.pool
import numbers
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from clup.data.classes import CANONICAL_CLASSES
from clup.data.synthetic.domains import DOMAINS, DomainStyle, encode_sample
from clup.data.synthetic.face import Identity
from clup.io import atomic_folder, check_replaceable

GENERATOR = "clup synthetic faces"
VERSION = 1
"""Bump whenever a change alters any rendered pixel, so stale folders are rebuilt."""

SPLITS = ("train", "test")
MANIFEST = "manifest.csv"
RECORD = "benchmark.json"
PREVIEW = "preview.png"
_OWN_ENTRIES = {MANIFEST, RECORD, PREVIEW, "images"}

Row = tuple[str, int, str]
"""One manifest line: path relative to the root, canonical label, split."""


def generate_domain(
    root: Path, domain: str, *, n_train: int, n_test: int, seed: int, progress: bool = True
) -> Path:
    """Render `domain` into `root` unless it is already there; return the manifest path."""
    style = _style(domain)
    sizes = {"train": _positive(n_train, "n_train"), "test": _positive(n_test, "n_test")}
    request = {
        "generator": GENERATOR,
        "version": VERSION,
        "domain": domain,
        "seed": _non_negative(seed, "seed"),
        "n_train": sizes["train"],
        "n_test": sizes["test"],
    }
    root = Path(root)
    if _is_complete(root, request):
        return root / MANIFEST
    check_replaceable(root, _OWN_ENTRIES, "the synthetic generator")
    with atomic_folder(root) as staging:
        _build(staging, style, sizes, request, progress)
    return root / MANIFEST


def class_counts(n: int, frequencies: tuple[float, ...]) -> np.ndarray:
    """Split `n` images over classes by `frequencies`, every class at least once if n allows.

    Exact apportionment instead of sampling keeps rare classes present in
    tiny datasets and keeps the class prior identical across seeds.
    """
    share = n * np.asarray(frequencies) / sum(frequencies)
    counts = np.floor(share).astype(int)
    if n >= len(counts):
        counts = np.maximum(counts, 1)
    while counts.sum() < n:
        counts[np.argmax(share - counts)] += 1
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    return counts


def write_preview(root: Path, rows: list[Row], per_class: int = 8) -> None:
    """A contact sheet of training images, one labelled row per class, for a human to check."""
    cell, label_width = 64, 84
    sheet = Image.new(
        "RGB", (label_width + per_class * cell, len(CANONICAL_CLASSES) * cell), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for label, name in enumerate(CANONICAL_CLASSES):
        draw.text((6, label * cell + cell // 2 - 6), name, fill="black")
        paths = [path for path, y, split in rows if y == label and split == "train"]
        for column, path in enumerate(paths[:per_class]):
            with Image.open(root / path) as image:
                tile = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (label_width + column * cell, label * cell))
    sheet.save(root / PREVIEW)


def _build(
    folder: Path, style: DomainStyle, sizes: dict[str, int], request: dict, progress: bool
) -> None:
    total = sum(sizes.values())
    # Every image has its own seed, so rendering in several processes gives the same bytes.
    workers = min(os.cpu_count() or 1, max(1, total // RENDER_CHUNK))
    with tqdm(total=total, desc=f"synthetic {style.name}", unit="img", disable=not progress
              ) as bar, _renderers(workers) as pool:
        rows = [
            row
            for split_id, split in enumerate(SPLITS)
            for row in _render_split(folder, style, split_id, sizes[split], request["seed"], bar,
                                     pool)
        ]
    _write_manifest(folder / MANIFEST, rows)
    write_preview(folder, rows)
    _write_record(folder / RECORD, request, style, rows)


RENDER_CHUNK = 64
"""Images a rendering process draws per task."""


@contextmanager
def _renderers(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """Processes forked from this one (only numpy and Pillow run in them), or None for one."""
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield pool


def _encode(job: tuple[DomainStyle, int, Identity, np.random.SeedSequence]) -> bytes:
    style, label, identity, seed = job
    return encode_sample(style, label, identity, np.random.default_rng(seed))


def _render_split(
    root: Path, style: DomainStyle, split_id: int, n: int, seed: int, bar: tqdm,
    pool: multiprocessing.pool.Pool | None = None,
) -> list[Row]:
    """Render one split; each image draws from its own child stream of the split's seed."""
    split = SPLITS[split_id]
    plan_seed, *image_seeds = np.random.SeedSequence([seed, style.domain_id, split_id]).spawn(n + 1)
    plan = np.random.default_rng(plan_seed)
    labels = plan.permutation(
        np.repeat(np.arange(len(CANONICAL_CLASSES)), class_counts(n, style.class_frequencies))
    )
    identities = [Identity.sample(plan) for _ in range(-(-n // style.images_per_identity))]
    owners = plan.permutation(np.arange(n) % len(identities))
    folder = root / "images" / split
    folder.mkdir(parents=True)
    jobs = [(style, int(label), identities[owner], image_seed)
            for label, owner, image_seed in zip(labels, owners, image_seeds, strict=True)]
    encoded = (map(_encode, jobs) if pool is None
               else pool.imap(_encode, jobs, chunksize=RENDER_CHUNK))
    rows = []
    for index, (label, data) in enumerate(zip(labels, encoded, strict=True)):
        name = f"{index:06d}{style.suffix}"
        (folder / name).write_bytes(data)
        rows.append((f"images/{split}/{name}", int(label), split))
        bar.update()
    return rows


def _write_manifest(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)


def _write_record(path: Path, request: dict, style: DomainStyle, rows: list[Row]) -> None:
    tally = Counter((split, label) for _, label, split in rows)
    counts = {
        split: {name: tally[split, label] for label, name in enumerate(CANONICAL_CLASSES)}
        for split in SPLITS
    }
    record = {
        **request,
        "image_size": style.size,
        "colour": style.colour,
        "classes": list(CANONICAL_CLASSES),
        "class_counts": counts,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")


def _is_complete(root: Path, request: dict) -> bool:
    try:
        record = json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return False
    same = all(record.get(key) == value for key, value in request.items())
    return same and (root / MANIFEST).is_file()


def _non_negative(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _style(domain: str) -> DomainStyle:
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {sorted(DOMAINS)}")
    return DOMAINS[domain]


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
