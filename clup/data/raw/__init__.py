"""Readers of the raw datasets in the layouts their owners distribute."""

from __future__ import annotations

from clup.data.raw.afe import AFE
from clup.data.raw.base import MissingDataset, RawDataset, RawFace
from clup.data.raw.expw import ExpW
from clup.data.raw.fer2013 import FER2013
from clup.data.raw.rafdb import RafDB
from clup.errors import ConfigError

__all__ = ["AFE", "DATASETS", "ExpW", "FER2013", "MissingDataset", "RafDB", "RawDataset",
           "RawFace", "get_dataset"]

DATASETS: dict[str, RawDataset] = {d.name: d for d in (AFE(), RafDB(), ExpW(), FER2013())}


def get_dataset(name: str) -> RawDataset:
    """The reader called `name` on the command line or in a config."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    return DATASETS[name]
