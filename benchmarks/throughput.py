"""Where a stage's training time goes: its loader and its model, measured apart, in one run.

Renders faces of the embedded benchmark and prepares them like a real dataset (JPEG at
`--prepared-size`), then prints, for each stage (the source model, stage 1's prediction,
stage 2's SwAV and stage 3's mixup fine-tuning):
- loader: per image in one process, the decoding (`load_image`) and the decoding plus the
  stage's augmentation, in ms; then images/s through the stage's real DataLoader for each
  `--workers` count;
- model: images/s of the stage's real LightningModule step (forward, backward, optimiser;
  prediction for stage 1) on batches already on the device, for each precision, with and
  without `--channels-last` and `--compile` when asked;
- the machine.
The images are never downloaded: about (warm-up + steps) x batch of them are rendered into
a temporary folder. A stage's speed is at most the slower of its loader and its model (on
the CPU the two share the cores).

    python benchmarks/throughput.py
    python benchmarks/throughput.py --device cuda --image-size 112 \
        --precision 32-true,bf16-mixed --channels-last --workers 0,8,16 --json out.json
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch._dynamo
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader

from clup.config import (
    CANONICAL_CLASSES,
    PRECISIONS,
    BackboneConfig,
    ClusterLabelerConfig,
    DatasetConfig,
    FinetuneConfig,
    PreprocessingConfig,
    RuntimeConfig,
    SourceConfig,
    SwAVConfig,
)
from clup.data.batch_augment import BatchMultiCrop
from clup.data.datamodule import DomainDataModule, load_image, on_device
from clup.data.datasets import read_dataset
from clup.data.manifest import ImageTable
from clup.data.prepare import SUFFIX, prepare_chunk
from clup.data.raw.base import RawFace
from clup.data.synthetic import generate_domain
from clup.models.backbones import build_backbone
from clup.models.checkpoint import Classifier
from clup.speed import SpeedSettings, compile_unavailable
from clup.stages.cluster_labeler import ClusterLabeler
from clup.stages.common import resolve_precision
from clup.stages.pseudo_label_finetuner import PseudoLabelFinetuner
from clup.stages.source_classifier import SourceClassifier
from clup.stages.swav_pretrainer import SwAVPretrainer

CLASSES = list(CANONICAL_CLASSES)
PER_IMAGE_SAMPLE = 256
"""Images timed one by one for the per-image costs."""


@dataclass(frozen=True)
class Stage:
    name: str
    view: str
    step: str


STAGES = (
    Stage("source", "labels", "SourceClassifier step"),
    Stage("stage1", "predict", "ClusterLabeler prediction"),
    Stage("stage2", "multicrop", "SwAVPretrainer step, multi-crop"),
    Stage("stage3", "pseudo_labels", "PseudoLabelFinetuner step, mixup"),
)


@dataclass(frozen=True)
class Setting:
    precision: str
    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        return self.precision + "+cl" * self.channels_last + "+compile" * self.compile


@dataclass
class Bench:
    """What every measurement shares: the stages' settings as an experiment would give them."""

    backbone: BackboneConfig
    preprocessing: PreprocessingConfig
    batch_size: int
    warmup: int
    steps: int
    device: str
    work: Path
    source: SourceConfig = field(default_factory=SourceConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    labeler: ClusterLabelerConfig = field(default_factory=ClusterLabelerConfig)

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def runtime(self, num_workers: int = 0, setting: Setting | None = None) -> RuntimeConfig:
        setting = setting or Setting("32-true")
        return RuntimeConfig(accelerator=self.accelerator, precision=setting.precision,
                             num_workers=num_workers, channels_last=setting.channels_last,
                             compile=setting.compile)


# ---- data ---------------------------------------------------------------------------------


def render_faces(folder: Path, count: int, prepared_size: int) -> DatasetConfig:
    """`count` faces of the benchmark's colour domain, prepared as a raw dataset would be
    (`prepared_size` px JPEG) unless `prepared_size` is 0."""
    rendered = DatasetConfig(kind="synthetic", path=str(folder / "rendered"), domain="studio",
                             train_size=count, test_size=1)
    generate_domain(Path(rendered.path), "studio", n_train=count, n_test=1, seed=0,
                    progress=False)
    if not prepared_size:
        return rendered
    table = read_dataset(rendered, CLASSES)["train"]
    prepared = folder / "prepared"
    faces = [RawFace(key=f"{i:05d}", split="train", label=int(label), where=str(path),
                     image=path) for i, (path, label) in enumerate(zip(table.paths, table.labels,
                                                                          strict=True))]
    prepare_chunk(faces, prepared / "images", prepared_size)
    with (prepared / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "split"))
        writer.writerows((f"images/{face.key}{SUFFIX}", face.label, "train") for face in faces)
    return DatasetConfig(kind="manifest", path=str(prepared / "manifest.csv"))


def select_everything(path: Path, table: ImageTable) -> Path:
    """A stage-1 table selecting every image with its own label, for stage 3's loader."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("index", "path", "pseudo_label", "selected"))
        writer.writerows((i, str(p), int(y), 1)
                         for i, (p, y) in enumerate(zip(table.paths, table.labels, strict=True)))
    return path


def datamodule(stage: Stage, data: DatasetConfig, bench: Bench, runtime: RuntimeConfig,
               pseudo_labels: Path | None) -> DomainDataModule:
    """The stage's DomainDataModule as its `run()` builds it."""
    kwargs: dict[str, Any] = {"batch_size": bench.batch_size, "runtime": runtime}
    if stage.view == "labels":
        kwargs.update(color_jitter=bench.source.color_jitter)
    elif stage.view == "predict":
        kwargs.update(eval_batch_size=bench.batch_size)
    elif stage.view == "multicrop":
        kwargs.update(train_views="multicrop", swav=bench.swav)
    else:
        kwargs.update(train_views="pseudo_labels", pseudo_labels=pseudo_labels,
                      color_jitter=bench.finetune.color_jitter)
    module = DomainDataModule(data, CLASSES, bench.preprocessing, **kwargs)
    module.prepare_data()
    module.setup()
    return module


def stage_loader(module: DomainDataModule, stage: Stage) -> DataLoader:
    return module.predict_dataloader() if stage.view == "predict" else module.train_dataloader()


def per_image_ms(modules: dict[str, DomainDataModule]) -> dict[str, dict[str, float]]:
    """Decoding, then decoding and augmenting, the same images one at a time in this
    process. Each stage decodes its own images: the source's and the target's differ in
    size and content, so one stage's decoding cannot be subtracted from another's total.
    With `swav.multicrop: batched` stage 2's crops are cut per batch and charged to its
    model step instead, so its augmentation here is only the conversion to a tensor."""
    costs = {}
    for stage in STAGES:
        dataset = stage_loader(modules[stage.name], stage).dataset
        count = min(len(dataset), PER_IMAGE_SAMPLE)
        paths = [dataset.table.paths[int(i)] for i in dataset.indices[:count]]
        for path in paths:  # into the page cache, so the first view is not charged the disk
            path.read_bytes()
        load_image(paths[0])  # and Pillow's first-call set-up is not charged to decoding
        dataset[0]  # nor the transform's
        # Best of 3, each from a cold image cache: both sides of the subtraction see the
        # same noise floor.
        decode = min(_seconds(lambda p=paths: [load_image(x) for x in p])
                     for _ in range(3)) * 1000 / count
        fresh = [stage_loader(modules[stage.name], stage).dataset for _ in range(3)]
        total = min(_seconds(lambda d=d, n=count: [d[i] for i in range(n)])
                    for d in fresh) * 1000 / count
        costs[stage.name] = {"decode_ms": decode, "augment_ms": total - decode,
                             "total_ms": total}
    return costs


def loader_images_per_s(loader: Iterable, warmup: int, steps: int, workers: int) -> float:
    """Images/s after `warmup` batches. Workers start together and deliver in rounds of
    `workers` batches, so both counts are whole rounds: a part round would count batches
    that were made before the clock started."""
    rounds = max(workers, 1)
    warmup, steps = _round_up(warmup, rounds), _round_up(steps, rounds)
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    images = 0
    begin = time.perf_counter()
    for _ in range(steps):
        images += len(next(batches)[1])
    return images / (time.perf_counter() - begin)


def measure_loaders(data: DatasetConfig, bench: Bench, workers: list[int]) -> dict[str, Any]:
    table = read_dataset(data, CLASSES)["train"]
    pseudo_labels = select_everything(bench.work / "pseudo_labels.csv", table)
    in_process = {s.name: datamodule(s, data, bench, bench.runtime(), pseudo_labels)
                  for s in STAGES}
    print("loader: per-image costs ...", flush=True)
    rates: dict[str, dict[str, float]] = {s.name: {} for s in STAGES}
    result = {"per_image_ms": per_image_ms(in_process), "images_per_s": rates}
    for count in workers:
        for stage in STAGES:
            print(f"loader: {stage.name} with {count} workers ...", flush=True)
            module = datamodule(stage, data, bench, bench.runtime(count), pseudo_labels)
            loader = stage_loader(module, stage)
            rates[stage.name][str(count)] = loader_images_per_s(loader, bench.warmup,
                                                                bench.steps, count)
            del loader, module
            gc.collect()  # persistent workers end with their loader
    return result


def loader_batches_needed(warmup: int, steps: int, workers: Sequence[int]) -> int:
    return max(_round_up(warmup, max(w, 1)) + _round_up(steps, max(w, 1)) for w in workers)


# ---- model --------------------------------------------------------------------------------


class DeviceBatches(L.LightningDataModule):
    """The same images again and again, already on the device: the model's speed alone.

    Inputs go through DomainDataModule's own steps on the device: SwAV's batched crops
    (so stage 2's step includes them when `swav.multicrop` is `batched`) and channels-last."""

    def __init__(self, batches: list[Any], runtime: RuntimeConfig,
                 multicrop: BatchMultiCrop | None = None) -> None:
        super().__init__()
        self.batches = batches
        self.runtime = runtime
        self.multicrop = multicrop

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return on_device(batch, self.multicrop, self.runtime.channels_last)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


class StepTimer(Callback):
    """Synchronised wall time at the start, after the warm-up steps and after the last step."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total
        self.marks: list[float] = []

    def _mark(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.marks.append(time.perf_counter())

    def _start(self, trainer: L.Trainer, batch_idx: int) -> None:
        if batch_idx == 0:
            self._mark(trainer)

    def _end(self, trainer: L.Trainer, batch_idx: int) -> None:
        if batch_idx + 1 in (self.warmup, self.total):
            self._mark(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._start(trainer, batch_idx)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._end(trainer, batch_idx)

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                               batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._start(trainer, batch_idx)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._end(trainer, batch_idx)


class InMemoryFinetuner(PseudoLabelFinetuner):
    """Stage 3 without its check, at the start of the fit, that every rank read the same
    stage-1 table: there is no table here, and the check is not part of a step."""

    def on_train_start(self) -> None:
        pass


def stage_module(stage: Stage, bench: Bench, folder: Path) -> L.LightningModule:
    """The stage's LightningModule with a fresh backbone, as its `run()` builds it."""
    backbone = build_backbone(bench.backbone)
    if stage.name == "source":
        model = Classifier(backbone, len(CLASSES), head=bench.source.head)
        return SourceClassifier(model, CLASSES, bench.source.optimizer,
                                bench.source.label_smoothing)
    if stage.name == "stage1":
        total = bench.batch_size * (bench.warmup + bench.steps)
        return ClusterLabeler(Classifier(backbone, len(CLASSES)), bench.labeler, 0, folder, total)
    if stage.name == "stage2":
        return SwAVPretrainer(backbone, bench.swav)
    return InMemoryFinetuner(Classifier(backbone, len(CLASSES)), CLASSES,
                             bench.finetune.optimizer, bench.finetune.mixup_alpha, 0)


def device_batches(stage: Stage, bench: Bench) -> list[Any]:
    """(images or multi-crop views, labels, indices) on the device; indices differ per batch
    so that stage 1 sees every image once."""
    size, count = bench.preprocessing.image_size, bench.batch_size
    generator = torch.Generator().manual_seed(0)

    def images(side: int) -> torch.Tensor:
        return torch.randn(count, 3, side, side, generator=generator).to(bench.device)

    if stage.view == "multicrop" and bench.swav.multicrop == "batched":
        # Whole images, as the loader yields them; the crops are cut on the device.
        inputs: Any = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8,
                                    generator=generator).to(bench.device)
    elif stage.view == "multicrop":
        swav = bench.swav
        inputs = ([images(size) for _ in range(swav.n_global_crops)]
                       + [images(swav.local_crop_size) for _ in range(swav.n_local_crops)])
    else:
        inputs = images(size)
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator).to(bench.device)
    return [(inputs, labels, torch.arange(i * count, (i + 1) * count, device=bench.device))
            for i in range(bench.warmup + bench.steps)]


def measure_model(stage: Stage, setting: Setting, bench: Bench) -> dict[str, Any]:
    torch.manual_seed(0)
    if setting.compile:  # each stage pays its own compilation, as in a run
        torch._dynamo.reset()
    folder = bench.work / "features" / f"{stage.name}-{setting.label}"
    module = stage_module(stage, bench, folder)
    runtime = bench.runtime(setting=setting)
    timer = StepTimer(bench.warmup, bench.warmup + bench.steps)
    trainer = L.Trainer(
        accelerator=bench.accelerator, devices=1,
        precision=resolve_precision(setting.precision, bench.accelerator),
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=bench.work,
        callbacks=[SpeedSettings(runtime), timer],
    )
    multicrop = (BatchMultiCrop(bench.preprocessing, bench.swav)
                 if stage.view == "multicrop" and bench.swav.multicrop == "batched" else None)
    data = DeviceBatches(device_batches(stage, bench), runtime, multicrop)
    if bench.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if stage.view == "predict":
        trainer.predict(module, datamodule=data, return_predictions=False)
    else:
        trainer.fit(module, datamodule=data)
    start, warm, end = timer.marks
    result = {"stage": stage.name, "setting": setting.label, "precision": setting.precision,
              "channels_last": setting.channels_last, "compile": setting.compile,
              "images_per_s": bench.batch_size * bench.steps / (end - warm),
              "warmup_s": warm - start, "peak_memory_gib": None}
    if bench.device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del module, trainer, data
    _free(bench.device)
    return result


# ---- report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    gpu = torch.cuda.is_available()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cuda": torch.version.cuda if gpu else None,
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu
        else None,
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def print_report(report: dict[str, Any]) -> None:
    m, args = report["machine"], report["arguments"]
    load = m["load_average_1min"]
    print(f"\nMachine: {m['cpu']}, {m['usable_cores'] or '?'} usable of {m['cores']} cores"
          + (f" (load average {load:.1f})" if load is not None else "")
          + f", torch {m['torch']} on {m['torch_threads']} threads, lightning "
          f"{m['lightning']}, Python {m['python']}")
    print(f"GPU: {m['gpu']} ({m['gpu_memory_gib']:.0f} GiB, CUDA {m['cuda']})" if m["gpu"]
          else "GPU: none")
    print(f"Run: {args['backbone']}{' small_images' if args['small_images'] else ''} at "
          f"{args['image_size']} px (SwAV local crops {report['local_crop_size']} px), batch "
          f"{args['batch_size']}, {args['steps']} timed steps after {args['warmup']} warm-up, "
          f"{report['images']} faces "
          + (f"prepared as {args['prepared_size']} px JPEG" if args["prepared_size"]
             else "as rendered"))

    costs = report["loader"]["per_image_ms"]
    print("\nLoader, per image in one process (ms): decoding, then the stage's augmentation")
    _table(["stage", "view", "decode", "augment", "total", "img/s per worker"],
           [[s.name, s.view, f"{costs[s.name]['decode_ms']:.2f}",
             f"{costs[s.name]['augment_ms']:.2f}", f"{costs[s.name]['total_ms']:.2f}",
             f"{1000 / costs[s.name]['total_ms']:.0f}"] for s in STAGES])

    rates = report["loader"]["images_per_s"]
    workers = args["workers"]
    print("\nLoader, images/s through the stage's DataLoader")
    _table(["stage", "view", *(f"{w} workers" for w in workers)],
           [[s.name, s.view, *(f"{rates[s.name][str(w)]:.0f}" for w in workers)]
            for s in STAGES])

    rows = report["model"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    cell = {(r["stage"], r["setting"]): r for r in rows}
    print(f"\nModel, images/s on batches already on the {args['device']} (forward, backward, "
          "optimiser; stage 1 predicts); SwAV's images have all their crops")
    _table(["stage", "step", *settings],
           [[s.name, s.step, *(_model_cell(cell[s.name, k], "images_per_s", "{:.0f}")
                               for k in settings)] for s in STAGES])
    print(f"\nModel, seconds of the {args['warmup']} warm-up steps (compilation included)")
    _table(["stage", *settings],
           [[s.name, *(_model_cell(cell[s.name, k], "warmup_s", "{:.1f}") for k in settings)]
            for s in STAGES])
    if args["device"] == "cuda":
        print("\nModel, peak GPU memory (GiB)")
        _table(["stage", *settings],
               [[s.name, *(_model_cell(cell[s.name, k], "peak_memory_gib", "{:.2f}")
                           for k in settings)] for s in STAGES])
    if report["compile_skipped"]:
        print(f"\n--compile skipped: {report['compile_skipped']}")

    print("\nBound by: each stage's best loader against its fastest model setting")
    _table(["stage", "loader img/s", "model img/s", "slower part"],
           [[b["stage"], f"{b['loader_images_per_s']:.0f} ({b['workers']} workers)",
             f"{b['model_images_per_s']:.0f} ({b['setting']})", b["slower"]]
            for b in report["bound_by"]])


def bound_by(report: dict[str, Any]) -> list[dict[str, Any]]:
    summary = []
    for stage in STAGES:
        loader = report["loader"]["images_per_s"][stage.name]
        workers = max(loader, key=loader.get)
        models = [r for r in report["model"] if r["stage"] == stage.name]
        best = max(models, key=lambda r: r["images_per_s"])
        summary.append({
            "stage": stage.name, "workers": int(workers), "loader_images_per_s": loader[workers],
            "setting": best["setting"], "model_images_per_s": best["images_per_s"],
            "slower": "loader" if loader[workers] < best["images_per_s"] else "model",
        })
    return summary


def _model_cell(row: dict[str, Any], key: str, style: str) -> str:
    return "-" if row[key] is None else style.format(row[key])


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))


# ---- entry point --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=("resnet18", "small_cnn"), default="resnet18")
    parser.add_argument("--small-images", action="store_true",
                        help="ResNet-18's 3x3 stride-1 stem without max-pool (stages 2-3 of "
                             "the reference setups)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="input side in px; SwAV's local crops are half of it")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (batches)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (batches) first")
    parser.add_argument("--workers", type=_int_list, default=[0, 2, 4],
                        help="loader worker counts, comma-separated")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", type=_precisions, default=["32-true"],
                        help="Lightning precisions, comma-separated")
    parser.add_argument("--channels-last", action="store_true",
                        help="also measure every precision in channels-last memory format")
    parser.add_argument("--compile", action="store_true",
                        help="also measure every setting with the backbone compiled")
    parser.add_argument("--prepared-size", type=int, default=DatasetConfig().prepared_size,
                        help="side of the prepared JPEGs the loader reads; 0: the rendered "
                             "images as they are (64 px PNG)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of this process (default: torch's, every core)")
    parser.add_argument("--multicrop", choices=("batched", "per_image"), default="batched",
                        help="SwAV's crops: cut per batch on the device (the default; stage "
                             "2's model step then includes them) or per image in the loader")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "steps", "warmup", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    return args


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected counts >= 0 like 0,2,4, got {text!r}")
    return values


def _precisions(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in PRECISIONS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"expected precisions among {list(PRECISIONS)}, "
                                         f"got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message="predict returned None")  # stage 1 writes to disk
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # asked for
    local_crop = max(args.image_size // 2, 8)
    skipped = compile_unavailable(torch.device(args.device)) if args.compile else None
    settings = [Setting(p, cl, comp) for p in args.precision
                for cl in sorted({False, args.channels_last})
                for comp in sorted({False, args.compile and skipped is None})]
    with tempfile.TemporaryDirectory(prefix="clup-throughput-") as work:
        bench = Bench(
            backbone=BackboneConfig(name=args.backbone, small_images=args.small_images),
            preprocessing=PreprocessingConfig(image_size=args.image_size),
            batch_size=args.batch_size, warmup=args.warmup, steps=args.steps,
            device=args.device, work=Path(work),
            swav=SwAVConfig(batch_size=args.batch_size, local_crop_size=local_crop,
                            multicrop=args.multicrop),
        )
        count = args.batch_size * max(loader_batches_needed(args.warmup, args.steps,
                                                            args.workers),
                                      args.warmup + args.steps)
        print(f"rendering {count} faces into {work} ...", flush=True)
        data = render_faces(Path(work), count, args.prepared_size)
        report: dict[str, Any] = {
            "machine": machine(), "arguments": {**vars(args), "json": str(args.json)},
            "images": count, "local_crop_size": local_crop, "compile_skipped": skipped,
        }
        report["loader"] = measure_loaders(data, bench, args.workers)
        report["model"] = []
        for setting in settings:
            for stage in STAGES:
                print(f"model: {stage.name} {setting.label} ...", flush=True)
                report["model"].append(measure_model(stage, setting, bench))
    report["bound_by"] = bound_by(report)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _seconds(work: Callable[[], Any]) -> float:
    begin = time.perf_counter()
    work()
    return time.perf_counter() - begin


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
