"""The dataset kinds, each declared once: what the `kind` of a dataset setting means.

A kind knows its own files: whether they are there (`check_exists`), how they are made
readable (`prepare`: rendered, written or prepared once), how they are read into train and
test `ImageTable`s with labels in the experiment's class order (`read`), what they are for
messages and the dry run (`where`, `survey`), the classes their numeric labels name
(`class_names`), the `domain` values the kind takes, the settings it refuses
(`check_settings`), and the side SwAV's batched crops are cut from (`crop_source_size`).

`KINDS` is the registry: the schema takes its `kind` and `domain` values from it and
clup/data/datasets.py dispatches to it. Adding a kind is one class here and one entry in
`KINDS`; a raw dataset is one reader in clup/data/raw, which becomes a kind by itself.

The schema reads this module, so this module does not import the schema: a kind reads
a dataset's settings through `DatasetSettings`, which `clup.config.DatasetConfig` is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from clup.config.loader import check_positive
from clup.data.classes import CANONICAL_CLASSES
from clup.data.digits import (
    DIGIT_CLASSES,
    SOURCES,
    is_written,
    require_package,
    split_sizes,
    write_domain,
)
from clup.data.folders import read_class_folders, read_image_folder
from clup.data.manifest import ImageTable, check_manifest_file, map_class_ids, read_manifest
from clup.data.prepare import MANIFEST, prepare
from clup.data.raw import DATASETS, RawDataset
from clup.data.raw.base import MissingDataset
from clup.errors import ConfigError, ManifestError
from clup.paths import PREPARED_ROOT_ENV, prepared_root, raw_dataset_root

SAMPLE_IMAGES = 3
"""Images per split the dry run decodes, to check that they can be read."""


class DatasetSettings(Protocol):
    """The settings of a dataset that the kinds read (`clup.config.DatasetConfig`)."""

    path: str
    domain: str
    seed: int
    train_size: int
    test_size: int
    prepared_size: int


@dataclass(frozen=True)
class Survey:
    """What the dry run says of a dataset, found without preparing it."""

    where: str
    contents: str
    """What it holds (`84 train, 35 test`), or what the run will make of it."""
    train_images: int
    samples: list[Path]
    """A few of its images, to decode."""


class DatasetKind(ABC):
    """A dataset layout: the user's own, a benchmark clup writes, or a raw dataset."""

    name: str
    class_names: tuple[str, ...] | None = None
    """The classes its numeric labels are indices into, in order (None: labels are names)."""

    @property
    def domains(self) -> tuple[str, ...]:
        """Its `domain` values (none: it reads no `domain`)."""
        return ()

    def check_settings(self, dataset: DatasetSettings, key: str) -> None:
        """Refuse settings this kind cannot use; `key` names the section (`target`)."""
        domains = self.domains
        if domains and dataset.domain not in domains:
            raise ConfigError(f"{key}.domain must be one of {list(domains)} for kind "
                              f"{self.name}, got {dataset.domain!r}")

    @abstractmethod
    def check_exists(self, dataset: DatasetSettings, key: str) -> None:
        """Stop at once when its files are not where the settings say, or when files it
        would write cannot be (a package is missing)."""

    def prepare(self, dataset: DatasetSettings, key: str, progress: bool) -> None:
        """Make it readable; the kinds that only read check that their files are there."""
        self.check_exists(dataset, key)

    @abstractmethod
    def read(self, dataset: DatasetSettings, classes: list[str], key: str
             ) -> dict[str, ImageTable]:
        """Train and test tables of the (prepared) dataset, labels in the order of
        `classes`."""

    def where(self, dataset: DatasetSettings, key: str) -> str:
        """What and where it is, for messages and the dry run."""
        return f"{self.name} {dataset.path}"

    def survey(self, dataset: DatasetSettings, classes: list[str], key: str) -> Survey:
        """What the dry run says of it; this reads it as it is."""
        where = self.where(dataset, key)
        splits = self.read(dataset, classes, key)
        counts = ", ".join(f"{len(t)} {s}{'' if t.has_labels or not len(t) else ' (unlabelled)'}"
                           for s, t in splits.items())
        samples = [path for table in splits.values() for path in table.paths[:SAMPLE_IMAGES]]
        return Survey(where, counts, len(splits["train"]), samples)

    def crop_source_size(self, dataset: DatasetSettings, image_size: int) -> int:
        """The side SwAV's batched crops are cut from (`SwAVConfig.crop_source_size`
        unset): `image_size`, the model's input side."""
        return image_size

    def check_classes(self, classes: list[str], what: str) -> None:
        """Stop when a class its labels name is not among the experiment's `classes`; `what`
        names the dataset in the message."""
        if self.class_names is not None:
            map_class_ids(self.class_names, classes, what)


class ManifestKind(DatasetKind):
    """The kinds read through a manifest, `path,label[,split]` (clup/data/manifest.py)."""

    @abstractmethod
    def manifest(self, dataset: DatasetSettings, key: str) -> Path:
        """The manifest it is read through."""

    def read(self, dataset: DatasetSettings, classes: list[str], key: str
             ) -> dict[str, ImageTable]:
        return read_manifest(self.manifest(dataset, key), classes, self.class_names)


class Manifest(ManifestKind):
    """The user's manifest, `path` itself; labels are class names or indices into the
    experiment's classes."""

    name = "manifest"

    def manifest(self, dataset: DatasetSettings, key: str) -> Path:
        return Path(dataset.path)

    def check_exists(self, dataset: DatasetSettings, key: str) -> None:
        check_manifest_file(Path(dataset.path), key)


class FolderKind(DatasetKind):
    """The kinds read from a folder of images (clup/data/folders.py)."""

    def check_exists(self, dataset: DatasetSettings, key: str) -> None:
        if not Path(dataset.path).is_dir():
            raise ManifestError(f"{key}.path: folder {dataset.path} does not exist")


class ClassFolders(FolderKind):
    """A folder per class, `path/<class>/...` or `path/{train,test}/<class>/...`."""

    name = "folders"

    def read(self, dataset: DatasetSettings, classes: list[str], key: str
             ) -> dict[str, ImageTable]:
        return read_class_folders(Path(dataset.path), classes)


class ImageFolder(FolderKind):
    """A folder of unlabelled images, all of them train images."""

    name = "images"

    def read(self, dataset: DatasetSettings, classes: list[str], key: str
             ) -> dict[str, ImageTable]:
        return read_image_folder(Path(dataset.path))


class Synthetic(ManifestKind):
    """The embedded benchmark (clup/data/synthetic), rendered once into `path` (`seed`,
    `train_size`, `test_size`), then read through its manifest like user data. Its renderer
    is imported on use: it loads OpenCV, which no other kind needs."""

    name = "synthetic"
    class_names = CANONICAL_CLASSES

    @property
    def domains(self) -> tuple[str, ...]:
        from clup.data.synthetic.domains import DOMAINS

        return tuple(DOMAINS)

    def check_settings(self, dataset: DatasetSettings, key: str) -> None:
        check_positive(dataset.train_size, f"{key}.train_size")
        check_positive(dataset.test_size, f"{key}.test_size")
        super().check_settings(dataset, key)

    def check_exists(self, dataset: DatasetSettings, key: str) -> None:
        """Nothing can be missing: the run renders what is not there."""

    def manifest(self, dataset: DatasetSettings, key: str) -> Path:
        from clup.data.synthetic.generate import MANIFEST as BENCHMARK_MANIFEST

        return Path(dataset.path) / BENCHMARK_MANIFEST

    def prepare(self, dataset: DatasetSettings, key: str, progress: bool) -> None:
        from clup.data.synthetic.generate import generate_domain

        generate_domain(Path(dataset.path), dataset.domain, n_train=dataset.train_size,
                        n_test=dataset.test_size, seed=dataset.seed, progress=progress)

    def survey(self, dataset: DatasetSettings, classes: list[str], key: str) -> Survey:
        where = self.where(dataset, key)
        self.check_classes(classes, f"{key} ({where})")
        if self.manifest(dataset, key).is_file():
            return super().survey(dataset, classes, key)
        return Survey(where, f"not rendered yet: the run renders {dataset.train_size} train "
                      f"and {dataset.test_size} test images", dataset.train_size, [])


class Digits(ClassFolders):
    """Handwritten digits shipped in Python packages (clup/data/digits.py), written once
    into `path` at `prepared_size` px with a `seed`ed split, then read as class folders."""

    name = "digits"
    class_names = DIGIT_CLASSES

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(SOURCES)

    def written(self, dataset: DatasetSettings) -> bool:
        """Whether the domain is written completely, with these settings."""
        return is_written(Path(dataset.path), dataset.domain, size=dataset.prepared_size,
                          seed=dataset.seed)

    def check_exists(self, dataset: DatasetSettings, key: str) -> None:
        if not self.written(dataset):
            require_package(dataset.domain, key)

    def prepare(self, dataset: DatasetSettings, key: str, progress: bool) -> None:
        write_domain(Path(dataset.path), dataset.domain, size=dataset.prepared_size,
                     seed=dataset.seed, progress=progress, where=key)

    def read(self, dataset: DatasetSettings, classes: list[str], key: str
             ) -> dict[str, ImageTable]:
        if not self.written(dataset):
            raise ManifestError(f"{key}: digits {dataset.domain} is not written into "
                                f"{dataset.path} yet, or not completely; `clup run` writes it")
        return super().read(dataset, classes, key)

    def where(self, dataset: DatasetSettings, key: str) -> str:
        return f"{SOURCES[dataset.domain].title}, {dataset.prepared_size} px, in {dataset.path}"

    def survey(self, dataset: DatasetSettings, classes: list[str], key: str) -> Survey:
        if self.written(dataset):
            return super().survey(dataset, classes, key)
        where = self.where(dataset, key)
        self.check_classes(classes, f"{key} ({where})")
        sizes = split_sizes(dataset.domain, dataset.seed, key)
        return Survey(where, f"not written yet: the run writes {sizes['train']} train and "
                      f"{sizes['test']} test images", sizes["train"], [])


class RawKind(ManifestKind):
    """A dataset in its owners' layout, read by its reader (clup/data/raw); `path` is its
    folder, relative to the data root unless absolute. It is prepared once (faces cropped,
    resized to `prepared_size`; clup/data/prepare.py) into a folder of its own, and read
    from there."""

    class_names = CANONICAL_CLASSES

    def __init__(self, reader: RawDataset) -> None:
        self.reader = reader
        self.name = reader.name

    def source(self, dataset: DatasetSettings, key: str) -> Path:
        """Its raw folder, checked to hold the dataset; `key` names the setting the path
        came from (`target.path`), for messages."""
        root, origin = raw_dataset_root(dataset.path, key)
        try:
            self.reader.check_layout(root)
        except MissingDataset as err:
            if origin is None:
                raise
            raise MissingDataset(f"{err} ({key} is {dataset.path!r} under the data root, "
                                 f"which comes from {origin})") from None
        return root

    def prepared_dir(self, dataset: DatasetSettings, key: str) -> Path:
        """Where its prepared copy lives; the name encodes its settings."""
        base = prepared_root()
        if base is None:
            raise ConfigError(f"{key}: no place for the prepared copy: set "
                              f"{PREPARED_ROOT_ENV} or the data root")
        split = f"-split{dataset.seed}" if self.reader.seeded_split else ""
        return base / f"{self.name}-{dataset.prepared_size}px{split}"

    def manifest(self, dataset: DatasetSettings, key: str) -> Path:
        return self.prepared_dir(dataset, key) / MANIFEST

    def check_exists(self, dataset: DatasetSettings, key: str) -> None:
        self.source(dataset, f"{key}.path")

    def prepare(self, dataset: DatasetSettings, key: str, progress: bool) -> None:
        root = self.source(dataset, f"{key}.path")
        report = prepare(self.reader, root, self.prepared_dir(dataset, key),
                         size=dataset.prepared_size, split_seed=dataset.seed,
                         progress=progress)
        if not report.already_done:
            print(report.describe(self.reader.title))

    def read(self, dataset: DatasetSettings, classes: list[str], key: str
             ) -> dict[str, ImageTable]:
        manifest = self.manifest(dataset, key)
        if not manifest.is_file():
            raise ManifestError(f"{key}: {self.name} is not prepared yet ({manifest} is "
                                f"missing); run `clup prepare {self.name}` or `clup run`")
        return super().read(dataset, classes, key)

    def where(self, dataset: DatasetSettings, key: str) -> str:
        return f"{self.reader.title} at {self.source(dataset, f'{key}.path')}"

    def survey(self, dataset: DatasetSettings, classes: list[str], key: str) -> Survey:
        where = self.where(dataset, key)
        out = self.prepared_dir(dataset, key)
        self.check_classes(classes, f"{key} ({where})")
        if (out / MANIFEST).is_file():
            prepared = super().survey(dataset, classes, key)
            return replace(prepared, contents=f"prepared, {prepared.contents}")
        faces = self.reader.read(self.source(dataset, f"{key}.path"), split_seed=dataset.seed)
        images = {face.image for face in faces if face.image is not None}
        missing = sum(not path.is_file() for path in images)
        samples = sorted(path for path in images if path.is_file())[:SAMPLE_IMAGES]
        return Survey(where, f"not prepared yet: {len(faces)} faces listed, {missing} image "
                      f"files missing (they would be skipped); the run prepares it into {out}",
                      sum(face.split == "train" for face in faces), samples)

    def crop_source_size(self, dataset: DatasetSettings, image_size: int) -> int:
        """Its prepared side: small crops keep the file's detail, as the per-image path
        does."""
        return dataset.prepared_size


KINDS: dict[str, DatasetKind] = {
    kind.name: kind
    for kind in (Manifest(), ClassFolders(), ImageFolder(), Synthetic(), Digits(),
                 *(RawKind(reader) for reader in DATASETS.values()))
}
"""Every kind by its `kind` value: the user's layouts, the benchmarks clup writes, then
the raw datasets."""


def every_domain() -> tuple[str, ...]:
    """The `domain` values of all kinds, in the order of `KINDS`."""
    return tuple(domain for kind in KINDS.values() for domain in kind.domains)
