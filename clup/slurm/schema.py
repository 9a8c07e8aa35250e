"""The `slurm` section of an experiment: the resources of each stage's batch job.

Only `clup.errors` is imported from clup: `clup.config` imports the experiment schema,
which imports this module, so importing the loader's checks here would close a cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from clup.errors import ConfigError

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
        _check_resources(self, key)


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
    stages: dict[str, SlurmStageConfig] = field(default_factory=dict)
    """Per-stage jobs (`slurm.stages.stage2: {nodes: 2}`), by stage name; a stage not
    named here takes the section's resources, except stage 1 (above)."""

    def validate(self, key: str) -> None:
        _check_resources(self, key)
        if self.account is not None and not self.account.strip():
            raise ConfigError(f"{key}.account must be a name or null, got {self.account!r}")
        if self.python is not None and not self.python.strip():
            raise ConfigError(f"{key}.python must be an interpreter or null, got {self.python!r}")


def _check_resources(node: SlurmConfig | SlurmStageConfig, key: str) -> None:
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
        value = getattr(node, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}.{name} must be positive, got {value}")
    if node.gpus_per_node is not None and node.gpus_per_node < 0:
        raise ConfigError(f"{key}.gpus_per_node must be >= 0, got {node.gpus_per_node}")
    if node.mem is not None and not SLURM_MEMORY.fullmatch(node.mem):
        raise ConfigError(f"{key}.mem must be a size such as 64G or 500M, got {node.mem!r}")
    for i, option in enumerate(node.extra):
        if not option.startswith("-") or "\n" in option:
            raise ConfigError(f"{key}.extra[{i}] must be one sbatch option such as "
                              f"--constraint=a100, got {option!r}")
