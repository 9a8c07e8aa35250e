"""One LightningDataModule per domain, shared by every stage.

The stage picks what the training loader yields (`train_views`):
- `labels`: the split's own labels with training augmentation (source training);
- `unlabelled`: the same images and augmentation, labels not required (-1 where
  unknown; the source-free baselines);
- `multicrop`: SwAV multi-crop views, no labels (stage 2);
- `pseudo_labels`: stage 1's pseudo-labelled images (stage 3), as `pseudo_label_rows` says:
  the `selected` subset, or every image with its `weighted` score as a fourth item; with
  `unselected_stream`, beside each batch of them a batch of the images stage 1 did not select
  (`LabelledEpochs`).
`predict_dataloader` is the train split with evaluation transforms and sample
indices (stage 1); `test_dataloader` is the test split (evaluation).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from clup.config import DatasetConfig, PreprocessingConfig, RuntimeConfig, SwAVConfig
from clup.data.batch_augment import BatchInput, BatchMultiCrop
from clup.data.datasets import prepare_dataset, read_dataset
from clup.data.images import load_image
from clup.data.kinds import KINDS
from clup.data.manifest import ImageTable
from clup.data.transforms import MultiCrop, eval_transform, train_transform
from clup.errors import ManifestError
from clup.speed import to_channels_last

TrainViews = Literal["labels", "unlabelled", "unaugmented", "multicrop", "pseudo_labels"]
"""What a training batch holds: labelled or unlabelled images with the training
augmentation, unlabelled ones as they are evaluated (`unaugmented`), SwAV's crops, or
stage 1's selected images with their pseudo-labels."""
PseudoLabelRows = Literal["selected", "weighted"]
"""Which rows of stage 1's table stage 3 trains on (`finetune.pseudo_labels`)."""
LABELLED_STREAM, UNLABELLED_STREAM = "labelled", "unlabelled"
"""The keys of a stage-3 batch that has an unselected stream beside the pseudo-labelled one."""


class ImageDataset(Dataset):
    """Images with labels and their index in the split; transform applied per item.

    With `weights` (one per row of `table`), each item has its weight as a fourth entry.
    Decoded images are kept in memory up to `cache_bytes` (per process: each loader
    worker keeps its own), so later epochs skip decoding.
    """

    def __init__(self, table: ImageTable, transform: Callable[..., Any], indices=None,
                 cache_bytes: int = 0, weights: np.ndarray | None = None) -> None:
        self.table = table
        self.transform = transform
        self.indices = np.arange(len(table)) if indices is None else np.asarray(indices)
        self.weights = weights
        self._seed: int | None = None
        self.cache_bytes = cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[Any, ...]:
        self._seed_augmentation()
        index = int(self.indices[item])
        image = self._decoded(index)
        if isinstance(self.transform, MultiCrop):
            views = self.transform(image)
        else:
            views = self.transform(image=image)["image"]
        if self.weights is not None:
            return views, int(self.table.labels[index]), index, self.weights[index]
        return views, int(self.table.labels[index]), index


    def _decoded(self, index: int) -> np.ndarray:
        image = self._cache.get(index)
        if image is None:
            image = load_image(self.table.paths[index])
            if self._cached_bytes + image.nbytes <= self.cache_bytes:
                image.setflags(write=False)  # the transforms must not alter the cached copy
                self._cache[index] = image
                self._cached_bytes += image.nbytes
        return image

    def _seed_augmentation(self) -> None:
        """Albumentations ignores global seeds; seed it from torch's seed of this process.

        Lightning's `seed_everything(workers=True)` gives each loader worker its own
        deterministic torch seed, so workers draw different but reproducible augmentations.
        """
        seed = torch.initial_seed() % 2**32
        if seed != self._seed and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)
            self._seed = seed


@dataclass(frozen=True)
class PseudoLabelTable:
    """Stage 1's table, one entry per row: the row's index in the train split, its
    pseudo-label, whether stage 1 selected it and its ranking score (None unless read)."""

    indices: np.ndarray
    labels: np.ndarray
    selected: np.ndarray
    scores: np.ndarray | None = None


def read_pseudo_labels(path: Path, table: ImageTable, scores: bool = False
                       ) -> PseudoLabelTable:
    """Every row of stage 1's table, checked against `table`; its `score` column only when
    `scores` is asked for (a finite number >= 0; stage 1 writes it in [0, 1])."""
    indices, labels, selected, values = [], [], [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if scores and "score" not in (reader.fieldnames or []):
            raise ManifestError(f"{path} has no score column, which finetune.pseudo_labels: "
                                "weighted reads; rerun stage 1 to write it")
        for line, row in enumerate(reader, start=2):
            index = int(row["index"])
            if index >= len(table) or row["path"] != str(table.paths[index]):
                raise ManifestError(
                    f"{path}:{line}: row does not match the target train split; "
                    "the dataset changed since stage 1 ran"
                )
            indices.append(index)
            labels.append(int(row["pseudo_label"]))
            selected.append(row["selected"] == "1")
            if scores:
                values.append(_score(row["score"], path, line))
    return PseudoLabelTable(
        np.asarray(indices, dtype=np.int64), np.asarray(labels, dtype=np.int64),
        np.asarray(selected, dtype=bool),
        np.asarray(values, dtype=np.float32) if scores else None,
    )


def _score(text: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ManifestError(f"{path}:{line}: score must be a finite number >= 0, got {text!r}")
    return value


class DomainDataModule(L.LightningDataModule):
    """A domain's splits and loaders; `runtime` sets the loaders' workers and memory format
    (default: read in the main process)."""

    def __init__(
        self,
        dataset: DatasetConfig,
        classes: list[str],
        preprocessing: PreprocessingConfig,
        *,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        runtime: RuntimeConfig | None = None,
        train_views: TrainViews = "labels",
        swav: SwAVConfig | None = None,
        pseudo_labels: Path | None = None,
        pseudo_label_rows: PseudoLabelRows = "selected",
        unselected_stream: bool = False,
        color_jitter: float = 0.0,
        augmentation: str = "standard",
        key: str = "target",
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.key = key
        self.classes = classes
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.runtime = runtime or RuntimeConfig(num_workers=0)
        self.train_views = train_views
        self.swav = swav
        self.pseudo_labels = pseudo_labels
        self.pseudo_label_rows = pseudo_label_rows
        self.unselected_stream = unselected_stream
        self.color_jitter = color_jitter
        self.augmentation = augmentation
        self.splits: dict[str, ImageTable] = {}
        self._evaluated = "test"
        # SwAV's crops of a training batch, when they are cut on the device.
        batched = train_views == "multicrop" and swav is not None and swav.multicrop == "batched"
        self._multicrop = (BatchMultiCrop(preprocessing, swav, dataset.horizontal_flip)
                           if batched else None)

    def prepare_data(self) -> None:
        prepare_dataset(self.dataset, self.key)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = read_dataset(self.dataset, self.classes, self.key)
        if not len(self.splits["train"]):
            raise ManifestError(f"{self.key} ({self.dataset.path}) has no train images")

    @property
    def train_table(self) -> ImageTable:
        return self.splits["train"]

    @property
    def test_table(self) -> ImageTable:
        return self.splits["test"]

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        table = self.train_table
        if self.train_views == "multicrop":
            if self.swav is None:
                raise ValueError("multicrop views need the swav settings")
            transform = (BatchInput(self.crop_source_size) if self._multicrop is not None
                         else MultiCrop(self.preprocessing, self.swav,
                                        self.dataset.horizontal_flip))
            dataset = ImageDataset(table, transform, cache_bytes=self._cache_bytes)
        elif self.train_views == "pseudo_labels":
            return self._pseudo_label_loader(table)
        elif self.train_views == "unaugmented":
            dataset = ImageDataset(table, eval_transform(self.preprocessing),
                                   cache_bytes=self._cache_bytes)
        else:
            if self.train_views == "labels" and not table.has_labels:
                raise ManifestError(f"{self.key} ({self.dataset.path}): training needs labels "
                                    "on every train image")
            dataset = ImageDataset(table, self._train_transform(), cache_bytes=self._cache_bytes)
        return self._loader(dataset, self.batch_size, shuffle=True)

    def _pseudo_label_loader(self, table: ImageTable) -> DataLoader | CombinedLoader:
        """Stage 3's loader: the pseudo-labelled images, and the unselected stream if asked."""
        if self.pseudo_labels is None:
            raise ValueError("pseudo_labels views need the stage-1 pseudo-label table")
        weighted = self.pseudo_label_rows == "weighted"
        rows = read_pseudo_labels(self.pseudo_labels, table, scores=weighted)
        chosen = np.ones(len(rows.indices), dtype=bool) if weighted else rows.selected
        indices = rows.indices[chosen]
        if not len(indices):
            raise ManifestError(
                f"{self.pseudo_labels} selects no sample: raise "
                "cluster_labeler.selection_ratio or lower cluster_labeler.purity_threshold"
            )
        relabelled = np.full(len(table), -1, dtype=np.int64)
        relabelled[indices] = rows.labels[chosen]
        weights = None
        if weighted:
            weights = np.zeros(len(table), dtype=np.float32)
            weights[indices] = rows.scores
        dataset = ImageDataset(ImageTable(table.paths, relabelled), self._train_transform(),
                               indices, cache_bytes=self._cache_bytes, weights=weights)
        loader = self._loader(dataset, self.batch_size, shuffle=True)
        if not self.unselected_stream:
            return loader
        # At least as many images as `dataset`, so at least as many batches on every rank,
        # whether either drops its last partial batch or not.
        unselected = self._loader(self._unselected_images(table, rows, len(dataset)),
                                  self.batch_size, shuffle=True)
        return LabelledEpochs({LABELLED_STREAM: loader, UNLABELLED_STREAM: unselected})

    def _unselected_images(self, table: ImageTable, rows: PseudoLabelTable, length: int
                           ) -> ImageDataset:
        """The images stage 1 did not select, labels hidden (-1), with the training
        augmentation; repeated, each as often, until there are at least `length` items, so
        that a pass over the pseudo-labelled loader never runs this one dry."""
        unselected = rows.indices[~rows.selected]
        if not len(unselected):
            raise ManifestError(
                f"{self.pseudo_labels} selects every sample, leaving none for "
                "finetune.unlabelled_loss; lower cluster_labeler.selection_ratio or set "
                "finetune.unlabelled_loss: none"
            )
        repeats = -(-length // len(unselected))
        hidden = ImageTable(table.paths, np.full(len(table), -1, dtype=np.int64))
        return ImageDataset(hidden, self._train_transform(), np.tile(unselected, repeats),
                            cache_bytes=self._cache_bytes)

    def _train_transform(self) -> Any:
        return train_transform(self.preprocessing, self.color_jitter,
                               self.dataset.horizontal_flip, self.augmentation)

    @property
    def crop_source_size(self) -> int:
        """The side SwAV's batched crops are cut from (see `SwAVConfig.crop_source_size`)."""
        if self.swav is not None and self.swav.crop_source_size is not None:
            return self.swav.crop_source_size
        return KINDS[self.dataset.kind].crop_source_size(self.dataset,
                                                         self.preprocessing.image_size)

    @property
    def _cache_bytes(self) -> int:
        return self.runtime.image_cache_mb << 20

    def predict_dataloader(self) -> DataLoader:
        dataset = ImageDataset(self.train_table, eval_transform(self.preprocessing))
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The split `evaluating` names (the test split unless inside it), unaugmented."""
        dataset = ImageDataset(self.splits[self._evaluated], eval_transform(self.preprocessing))
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    @property
    def evaluated_split(self) -> str:
        """The split `trainer.test` evaluates: `test`, or `train` inside `evaluating`."""
        return self._evaluated

    @contextmanager
    def evaluating(self, split: str) -> Iterator[None]:
        """Within it, `trainer.test` evaluates `split` ("train" or "test")."""
        if split not in ("train", "test"):
            raise ValueError(f"no split {split!r}: train or test")
        earlier, self._evaluated = self._evaluated, split
        try:
            yield
        finally:
            self._evaluated = earlier

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        training = self.trainer is not None and self.trainer.training
        return on_device(batch, self._multicrop if training else None,
                         self.runtime.channels_last)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # Each of the ranks sees 1/world of the data: dropping its last partial batch must
        # not drop its only one.
        world = self.trainer.world_size if self.trainer is not None else 1
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > batch_size * world,
            **loader_options(self.runtime),
        )


class LabelledEpochs(CombinedLoader):
    """Lightning's CombinedLoader in `min_size` mode, for a first loader and a second one at
    least as long: an epoch is one pass over the first. Its length is known before it is
    iterated (Lightning's own needs an iterator first), as `fit_stage` reads it."""

    def __init__(self, loaders: dict[str, DataLoader]) -> None:
        super().__init__(loaders, "min_size")

    def __len__(self) -> int:
        try:
            return super().__len__()
        except RuntimeError:  # not iterated yet
            return min(len(loader) for loader in self.flattened)


def on_device(batch: Any, multicrop: BatchMultiCrop | None, channels_last: bool) -> Any:
    """A batch once on the training device: SwAV's crops cut (when `multicrop`), then
    channels-last where asked."""
    if multicrop is not None:
        images, labels, indices = batch
        batch = (multicrop(images), labels, indices)
    return to_channels_last(batch) if channels_last else batch


def loader_options(runtime: RuntimeConfig) -> dict[str, Any]:
    """DataLoader settings of `runtime`; the worker settings only when there are workers."""
    pin_memory = runtime.pin_memory
    if pin_memory is None:
        pin_memory = runtime.accelerator != "cpu" and torch.cuda.is_available()
    options: dict[str, Any] = {"num_workers": runtime.num_workers, "pin_memory": pin_memory}
    if runtime.num_workers:
        options.update(persistent_workers=runtime.persistent_workers,
                       prefetch_factor=runtime.prefetch_factor)
    return options
