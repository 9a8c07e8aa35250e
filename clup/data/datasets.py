"""From a dataset setting to its images: prepare once, then read the splits.

Every kind (clup/data/kinds.py) ends up as two `ImageTable`s (train, test) with labels in
the experiment's class order; the data module, the driver and the dry run go through here.
`key` names the setting a dataset comes from (`target`), for messages.
"""

from __future__ import annotations

from pathlib import Path

from clup.config import DatasetConfig
from clup.data.kinds import KINDS, RawKind, Survey
from clup.data.manifest import ImageTable
from clup.data.raw import RawDataset, get_dataset


def check_exists(config: DatasetConfig, key: str) -> None:
    """Stop at once when a dataset's files are not where the experiment says, or when a
    dataset to write cannot be (its package is missing)."""
    KINDS[config.kind].check_exists(config, key)


def prepare_dataset(config: DatasetConfig, key: str = "dataset", progress: bool = True) -> None:
    """Make the dataset readable: render or write a benchmark, or prepare a raw dataset."""
    KINDS[config.kind].prepare(config, key, progress)


def read_dataset(config: DatasetConfig, classes: list[str], key: str = "dataset"
                 ) -> dict[str, ImageTable]:
    """Train and test tables of a (prepared) dataset, labels in the order of `classes`."""
    return KINDS[config.kind].read(config, classes, key)


def survey_dataset(config: DatasetConfig, classes: list[str], key: str) -> Survey:
    """What the dry run says of a dataset: where it is, what it holds or will hold."""
    return KINDS[config.kind].survey(config, classes, key)


def raw_source(config: DatasetConfig, key: str) -> tuple[RawDataset, Path]:
    """The reader and raw folder of a dataset in its owners' layout, checked to be there."""
    kind = RawKind(get_dataset(config.kind))
    return kind.reader, kind.source(config, key)


def prepared_dir(config: DatasetConfig, key: str) -> Path:
    """Where the prepared copy of a raw dataset lives; the name encodes its settings."""
    return RawKind(get_dataset(config.kind)).prepared_dir(config, key)
