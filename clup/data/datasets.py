"""From a dataset setting to its images: prepare once, then read the splits.

Every kind ends up as two `ImageTable`s (train, test) with labels in the
experiment's class order; the data module and the dry run both go through here.
"""

from __future__ import annotations

from pathlib import Path

from clup.config import CANONICAL_CLASSES, RAW_DATASETS, DatasetConfig
from clup.data.digits import SOURCES, is_written, require_package, write_domain
from clup.data.folders import read_class_folders, read_image_folder
from clup.data.manifest import ImageTable, read_manifest
from clup.data.raw import RawDataset, get_dataset
from clup.data.raw.base import MissingDataset
from clup.errors import ConfigError, ManifestError
from clup.paths import PREPARED_ROOT_ENV, prepared_root, raw_dataset_root


def raw_source(config: DatasetConfig, key: str) -> tuple[RawDataset, Path]:
    """The reader and raw folder of a dataset in its owners' layout, checked to be there.

    `key` names the setting the path came from (`target.path`), for messages.
    """
    dataset = get_dataset(config.kind)
    root, origin = raw_dataset_root(config.path, key)
    try:
        dataset.check_layout(root)
    except MissingDataset as err:
        if origin is None:
            raise
        raise MissingDataset(f"{err} ({key} is {config.path!r} under the data root, which "
                             f"comes from {origin})") from None
    return dataset, root


def prepared_dir(config: DatasetConfig, key: str) -> Path:
    """Where the prepared copy of a raw dataset lives; the name encodes its settings."""
    base = prepared_root()
    if base is None:
        raise ConfigError(f"{key}: no place for the prepared copy: set {PREPARED_ROOT_ENV} "
                          "or the data root")
    split = f"-split{config.seed}" if get_dataset(config.kind).seeded_split else ""
    return base / f"{config.kind}-{config.prepared_size}px{split}"


def manifest_of(config: DatasetConfig, key: str) -> Path | None:
    """The manifest a dataset is read through (None for the folder layouts)."""
    if config.kind == "synthetic":
        return Path(config.path) / "manifest.csv"
    if config.kind in RAW_DATASETS:
        return prepared_dir(config, key) / "manifest.csv"
    if config.kind == "manifest":
        return Path(config.path)
    return None


def digits_written(config: DatasetConfig) -> bool:
    """Whether a `digits` domain is written completely, with the experiment's settings."""
    return is_written(Path(config.path), config.domain, size=config.prepared_size,
                      seed=config.seed)


def check_exists(config: DatasetConfig, key: str) -> None:
    """Stop at once when a dataset's files are not where the experiment says, or when a
    dataset to write cannot be (its package is missing)."""
    if config.kind in RAW_DATASETS:
        raw_source(config, f"{key}.path")
    elif config.kind == "digits" and not digits_written(config):
        require_package(config.domain, key)
    elif config.kind in ("folders", "images") and not Path(config.path).is_dir():
        raise ManifestError(f"{key}.path: folder {config.path} does not exist")
    elif config.kind == "manifest" and not Path(config.path).is_file():
        raise ManifestError(f"{key}.path: manifest {config.path} does not exist")


def prepare_dataset(config: DatasetConfig, key: str = "dataset", progress: bool = True) -> None:
    """Make the dataset readable: render or write a benchmark, or prepare a raw dataset."""
    if config.kind == "synthetic":
        from clup.data.synthetic import generate_domain

        generate_domain(Path(config.path), config.domain, n_train=config.train_size,
                        n_test=config.test_size, seed=config.seed, progress=progress)
    elif config.kind == "digits":
        write_domain(Path(config.path), config.domain, size=config.prepared_size,
                     seed=config.seed, progress=progress, where=key)
    elif config.kind in RAW_DATASETS:
        from clup.data.prepare import prepare

        dataset, root = raw_source(config, f"{key}.path")
        report = prepare(dataset, root, prepared_dir(config, key), size=config.prepared_size,
                         split_seed=config.seed, progress=progress)
        if not report.already_done:
            print(report.describe(dataset.title))
    else:
        check_exists(config, key)


def read_dataset(config: DatasetConfig, classes: list[str], key: str = "dataset"
                 ) -> dict[str, ImageTable]:
    """Train and test tables of a (prepared) dataset, labels in the order of `classes`."""
    if config.kind == "digits" and not digits_written(config):
        raise ManifestError(f"{key}: digits {config.domain} is not written into {config.path} "
                            "yet, or not completely; `clup run` writes it")
    if config.kind in ("folders", "digits"):
        return read_class_folders(Path(config.path), classes)
    if config.kind == "images":
        return read_image_folder(Path(config.path))
    manifest = manifest_of(config, key)
    assert manifest is not None
    if config.kind in RAW_DATASETS and not manifest.is_file():
        raise ManifestError(f"{key}: {config.kind} is not prepared yet ({manifest} is missing); "
                            f"run `clup prepare {config.kind}` or `clup run`")
    id_names = CANONICAL_CLASSES if config.kind in (*RAW_DATASETS, "synthetic") else None
    return read_manifest(manifest, classes, id_names)


def describe_dataset(config: DatasetConfig, key: str) -> str:
    """Where a dataset is, for messages and the dry run."""
    if config.kind in RAW_DATASETS:
        _, root = raw_source(config, f"{key}.path")
        return f"{get_dataset(config.kind).title} at {root}"
    if config.kind == "digits":
        return f"{SOURCES[config.domain].title}, {config.prepared_size} px, in {config.path}"
    return f"{config.kind} {config.path}"
