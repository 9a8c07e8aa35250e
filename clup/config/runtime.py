"""The `runtime` and `wandb` sections: hardware, processes and logging, for every stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clup.config.loader import check_choice, check_non_negative, check_positive

PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
              "32", "16", "bf16", "64")
"""`auto` and Lightning's precision names."""

STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
"""Lightning strategies the stages support; `auto` is DDP when there are several devices.
(`ddp_spawn` would leave the test metrics in the workers; sharded strategies would need
every rank to save the model.)"""


@dataclass
class RuntimeConfig:
    """Hardware and process settings shared by every stage.

    `precision: auto` is bf16 mixed precision on a GPU that supports it, else 32-bit;
    any Lightning precision string (`16-mixed`, `32-true`, ...) is passed through.
    `devices`, `num_nodes`, `strategy`: Lightning's, per stage process; `auto` devices is
    every GPU the stage is given (one process on the CPU). More than one device in all
    trains with DDP; `sync_batchnorm` then synchronises BatchNorm statistics across ranks.
    `stage1_gpus`: how many of the visible GPUs stage 1 takes (the first ones) while
    stage 2, or a baseline's adaptation, takes the others; stage 3 takes them all.
    `channels_last`: the model and its 4-D input batches in channels-last memory format
    (faster convolutions on tensor-core GPUs). `compile`: `torch.compile` of the backbone,
    in place so checkpoints keep their keys; skipped with a warning where it cannot run.
    `pin_memory` (`null`: when training on a CUDA GPU), `persistent_workers` and
    `prefetch_factor` (batches each worker prepares ahead): the DataLoader's; the last two
    apply only with `num_workers` above 0. `image_cache_mb`: decoded images each loading
    process keeps in memory, so an image is decoded once rather than once per epoch (0:
    none; images past the budget are decoded each time). `preload_stages`: on runs without
    GPUs whose stages are one process each, every stage starts as a fork of one process
    that imported the training stack once, instead of a fresh interpreter that imports it
    again (about 9 s of a core per stage on 2 cores; clup/launch.py); false: always a
    fresh interpreter.
    """

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: str = "32-true"
    num_workers: int = 4
    threads: int | None = None
    devices: int | Literal["auto"] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    stage1_gpus: int = 1
    channels_last: bool = False
    compile: bool = False
    pin_memory: bool | None = None
    persistent_workers: bool = True
    prefetch_factor: int = 4
    image_cache_mb: int = 512
    preload_stages: bool = True

    def validate(self, key: str) -> None:
        check_non_negative(self.image_cache_mb, f"{key}.image_cache_mb")
        check_choice(self.precision, PRECISIONS, f"{key}.precision")
        check_non_negative(self.num_workers, f"{key}.num_workers")
        if self.threads is not None:
            check_positive(self.threads, f"{key}.threads")
        if self.devices != "auto":
            check_positive(self.devices, f"{key}.devices")
        check_positive(self.num_nodes, f"{key}.num_nodes")
        check_positive(self.stage1_gpus, f"{key}.stage1_gpus")
        check_positive(self.prefetch_factor, f"{key}.prefetch_factor")
        check_choice(self.strategy, STRATEGIES, f"{key}.strategy")


@dataclass
class WandbConfig:
    """Weights & Biases: `auto` logs online when an account is configured, else offline."""

    project: str = "clup"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    group: str | None = None
    """W&B run group; default the experiment's name (a benchmark groups by setup)."""
    console: Literal["auto", "off", "wrap", "redirect"] = "auto"
    """W&B's copy of each stage's terminal output (its `console` setting). `off` saves about
    2 s of CPU per stage on 2 cores, measured on a 1,550-step fit (docs/scale.md, "Scale and
    speed"); `clup benchmark` sets it off, as its stages' output is in their `stage.log`."""
