"""Which process of a multi-process stage this is, and the device layout a stage trains on.

A stage on several devices runs as several processes (DDP). Lightning starts the other
ranks of a local run by re-running the stage command with `LOCAL_RANK` and `NODE_RANK`
set; torchrun sets `RANK`; SLURM's srun starts every rank at once with `SLURM_PROCID`.
Each of them runs `clup stage`, so the run folder's bookkeeping (its lock, its done record)
must be kept by global rank 0 alone, and known before Lightning has set anything up.
"""

from __future__ import annotations

import os

from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment

from clup.config import RuntimeConfig
from clup.errors import ConfigError

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
DEVICES_VARIABLE = "CLUP_DEVICES"
NODES_VARIABLE = "CLUP_NUM_NODES"
"""Set by a SLURM job script: the job's resources decide a stage's layout there."""
LAUNCHER_VARIABLE = "CLUP_LAUNCHER"
"""`local` in the stage processes `clup run` starts (and the ranks Lightning starts from them)."""


def is_rank_zero() -> bool:
    """True unless a launcher marked this process as another rank than global rank 0."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def device_layout(runtime: RuntimeConfig) -> tuple[int | str, int]:
    """(devices, num_nodes) for a stage's Trainer: the environment's, else the experiment's."""
    devices: int | str = runtime.devices
    num_nodes = runtime.num_nodes
    if os.environ.get(DEVICES_VARIABLE):
        devices = _positive_int(DEVICES_VARIABLE)
    if os.environ.get(NODES_VARIABLE):
        num_nodes = _positive_int(NODES_VARIABLE)
    return devices, num_nodes


def local_processes(runtime: RuntimeConfig) -> int:
    """How many processes of a stage share this machine: its devices when counted."""
    devices, _ = device_layout(runtime)
    return devices if isinstance(devices, int) else 1


def _positive_int(name: str) -> int:
    value = os.environ[name]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"environment variable {name} must be a positive integer, "
                          f"got {value!r}")
    return int(value)


def cluster_environment() -> list[ClusterEnvironment] | None:
    """Lightning's local environment for the stages `clup run` starts itself.

    Inside a SLURM allocation (`sbatch --wrap "clup run ..."`, say) Lightning would
    otherwise read srun's ranks, which no srun set, and wait for ranks that never start.
    Stages started by srun or torchrun keep Lightning's detection.
    """
    if os.environ.get(LAUNCHER_VARIABLE) == "local":
        return [LightningEnvironment()]
    return None


def launch_id() -> str | None:
    """What every rank of one launch shares and the next launch does not: a SLURM job and
    its requeue count, or torchrun's run id; None for Lightning's own launcher, whose
    ranks start only after rank 0 has claimed the stage."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{os.environ['TORCHELASTIC_RUN_ID']}"
    return None
