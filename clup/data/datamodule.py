"""One LightningDataModule per domain, shared by every stage.

The stage picks what the training loader yields (`train_views`):
- `labels`: the split's own labels with training augmentation (source training);
- `unlabelled`: the same images and augmentation, labels not required (-1 where
  unknown; the source-free baselines);
- `multicrop`: SwAV multi-crop views, no labels (stage 2);
- `pseudo_labels`: the subset selected by stage 1 with its pseudo-labels (stage 3).
`predict_dataloader` is the train split with evaluation transforms and sample
indices (stage 1); `test_dataloader` is the test split (evaluation).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
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


class ImageDataset(Dataset):
    """Images with labels and their index in the split; transform applied per item.

    Decoded images are kept in memory up to `cache_bytes` (per process: each loader
    worker keeps its own), so later epochs skip decoding.
    """

    def __init__(self, table: ImageTable, transform: Callable[..., Any], indices=None,
                 cache_bytes: int = 0) -> None:
        self.table = table
        self.transform = transform
        self.indices = np.arange(len(table)) if indices is None else np.asarray(indices)
        self._seed: int | None = None
        self.cache_bytes = cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[Any, int, int]:
        self._seed_augmentation()
        index = int(self.indices[item])
        image = self._decoded(index)
        if isinstance(self.transform, MultiCrop):
            views = self.transform(image)
        else:
            views = self.transform(image=image)["image"]
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


def read_selected_pseudo_labels(path: Path, table: ImageTable) -> tuple[np.ndarray, np.ndarray]:
    """Indices and pseudo-labels of the rows stage 1 selected, checked against `table`."""
    indices, labels = [], []
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            index = int(row["index"])
            if index >= len(table) or row["path"] != str(table.paths[index]):
                raise ManifestError(
                    f"{path}:{line}: row does not match the target train split; "
                    "the dataset changed since stage 1 ran"
                )
            if row["selected"] == "1":
                indices.append(index)
                labels.append(int(row["pseudo_label"]))
    return np.asarray(indices, dtype=np.int64), np.asarray(labels, dtype=np.int64)


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
        self.color_jitter = color_jitter
        self.augmentation = augmentation
        self.splits: dict[str, ImageTable] = {}
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

    def train_dataloader(self) -> DataLoader:
        table = self.train_table
        if self.train_views == "multicrop":
            if self.swav is None:
                raise ValueError("multicrop views need the swav settings")
            transform = (BatchInput(self.crop_source_size) if self._multicrop is not None
                         else MultiCrop(self.preprocessing, self.swav,
                                        self.dataset.horizontal_flip))
            dataset = ImageDataset(table, transform, cache_bytes=self._cache_bytes)
        elif self.train_views == "pseudo_labels":
            if self.pseudo_labels is None:
                raise ValueError("pseudo_labels views need the stage-1 pseudo-label table")
            indices, labels = read_selected_pseudo_labels(self.pseudo_labels, table)
            if not len(indices):
                raise ManifestError(
                    f"{self.pseudo_labels} selects no sample: raise "
                    "cluster_labeler.selection_ratio or lower cluster_labeler.purity_threshold"
                )
            relabelled = np.full(len(table), -1, dtype=np.int64)
            relabelled[indices] = labels
            dataset = ImageDataset(ImageTable(table.paths, relabelled), self._train_transform(),
                                   indices, cache_bytes=self._cache_bytes)
        elif self.train_views == "unaugmented":
            dataset = ImageDataset(table, eval_transform(self.preprocessing),
                                   cache_bytes=self._cache_bytes)
        else:
            if self.train_views == "labels" and not table.has_labels:
                raise ManifestError(f"{self.key} ({self.dataset.path}): training needs labels "
                                    "on every train image")
            dataset = ImageDataset(table, self._train_transform(), cache_bytes=self._cache_bytes)
        return self._loader(dataset, self.batch_size, shuffle=True)

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
        dataset = ImageDataset(self.test_table, eval_transform(self.preprocessing))
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

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
