"""Stage 1's per-image outputs on disk: normalised embeddings (float16) and softmax.

A million images at 513 dimensions are a gigabyte in float16: no process should hold them
as one tensor. Every rank of the predict pass appends its images' rows to its own shard
files (ranks on different nodes never write to one file); rank 0 then scatters the shards
into `features.npy` [N, D] and `probs.npy` [N, C], memory-mapped and in index order, and
records them complete in `features.json`. A rerun after a crash reuses them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from clup.errors import ClupError
from clup.io import read_json, write_json

FEATURES = "features.npy"
PROBS = "probs.npy"
RECORD = "features.json"
FEATURE_DTYPE = np.float16
ASSEMBLE_ROWS = 1 << 16


class ShardWriter:
    """One rank's rows, appended batch by batch: indices, features and softmax."""

    def __init__(self, folder: Path, rank: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, BinaryIO] = {
            kind: (folder / _shard_name(kind, rank)).open("wb")
            for kind in ("index", "features", "probs")
        }

    def append(self, indices: np.ndarray, features: np.ndarray, probs: np.ndarray) -> None:
        self._files["index"].write(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
        self._files["features"].write(
            np.ascontiguousarray(features, dtype=FEATURE_DTYPE).tobytes())
        self._files["probs"].write(np.ascontiguousarray(probs, dtype=np.float32).tobytes())

    def close(self) -> None:
        for handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


def assemble(folder: Path, world_size: int, num_samples: int, dim: int,
             num_classes: int) -> None:
    """Scatter every rank's shard into the index-ordered arrays; each image exactly once."""
    features = np.lib.format.open_memmap(folder / f"{FEATURES}.partial", mode="w+",
                                         dtype=FEATURE_DTYPE, shape=(num_samples, dim))
    probs = np.lib.format.open_memmap(folder / f"{PROBS}.partial", mode="w+",
                                      dtype=np.float32, shape=(num_samples, num_classes))
    seen = np.zeros(num_samples, dtype=np.int64)
    for rank in range(world_size):
        index = _read_shard(folder, "index", rank, np.int64, 1)[:, 0]
        if len(index) and (index.min() < 0 or index.max() >= num_samples):
            raise ClupError(f"{folder}: rank {rank} wrote rows for images outside 0..N-1")
        np.add.at(seen, index, 1)
        rank_features = _read_shard(folder, "features", rank, FEATURE_DTYPE, dim)
        rank_probs = _read_shard(folder, "probs", rank, np.float32, num_classes)
        if not len(rank_features) == len(rank_probs) == len(index):
            raise ClupError(f"{folder}: rank {rank}'s shards disagree on their row count")
        for start in range(0, len(index), ASSEMBLE_ROWS):
            rows = slice(start, start + ASSEMBLE_ROWS)
            features[index[rows]] = rank_features[rows]
            probs[index[rows]] = rank_probs[rows]
    if (seen != 1).any():
        missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
        raise ClupError(f"{folder}: the predict pass gave {missing} images no row and "
                        f"{repeated} more than one")
    features.flush()
    probs.flush()
    del features, probs
    os.replace(folder / f"{FEATURES}.partial", folder / FEATURES)
    os.replace(folder / f"{PROBS}.partial", folder / PROBS)
    write_json(folder / RECORD, {"num_samples": num_samples, "dim": dim,
                                 "num_classes": num_classes, "dtype": "float16"})
    for rank in range(world_size):
        for kind in ("index", "features", "probs"):
            (folder / _shard_name(kind, rank)).unlink()


def is_complete(folder: Path, num_samples: int, dim: int, num_classes: int) -> bool:
    record = folder / RECORD
    return record.is_file() and read_json(record) == {
        "num_samples": num_samples, "dim": dim, "num_classes": num_classes, "dtype": "float16"}


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] float16, memory-mapped; probs [N, C] float32)."""
    return (np.load(folder / FEATURES, mmap_mode="r"),
            np.asarray(np.load(folder / PROBS, mmap_mode="r")))


def _shard_name(kind: str, rank: int) -> str:
    return f"{kind}.rank{rank}.bin"


def _read_shard(folder: Path, kind: str, rank: int, dtype: type, width: int) -> np.ndarray:
    path = folder / _shard_name(kind, rank)
    if not path.is_file():
        raise ClupError(f"{path} is missing: rank {rank} of the predict pass wrote nothing")
    if path.stat().st_size == 0:
        return np.zeros((0, width), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r").reshape(-1, width)
