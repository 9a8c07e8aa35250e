"""Which GPUs and CPU threads each stage gets: from each stage's declared share
(`Stage.gpus`)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from clup.config import ExperimentConfig
from clup.registry import STAGES
from clup.threads import POOL_VARIABLE, THREADS_VARIABLE


def plan_devices(gpus: list[str], cpu_threads: int, stage1_gpus: int = 1,
                 thread_pool: Path | None = None, alone: Collection[str] = ()
                 ) -> dict[str, dict[str, str]]:
    """Environment per stage: stage 1 takes the first `stage1_gpus` GPUs and stage 2 (or a
    baseline's adaptation) the others, both at once; the source model and stage 3 take all,
    as do the stages in `alone`, which this experiment runs one after the other
    (`pipeline.running_alone`).

    When stage 1 leaves no GPU over, the concurrent stages share its GPUs. Without GPUs,
    given a `thread_pool` every stage may use every thread and those running at once
    split them (clup/threads.py); without one the concurrent stages get half each.
    """
    threads = str(max(1, cpu_threads // 2))
    all_threads = str(max(1, cpu_threads))
    if not gpus and thread_pool is not None:
        shared = {"CUDA_VISIBLE_DEVICES": "", THREADS_VARIABLE: all_threads,
                  POOL_VARIABLE: str(thread_pool)}
        return {name: dict(shared) for name in STAGES}
    first = ",".join(gpus[:stage1_gpus])
    share = {"all": ",".join(gpus), "first": first, "rest": ",".join(gpus[stage1_gpus:]) or first}
    gpus_of = {name: "all" if name in alone else stage.gpus for name, stage in STAGES.items()}
    return {name: {"CUDA_VISIBLE_DEVICES": share[gpus_of[name]],
                   THREADS_VARIABLE: all_threads if gpus_of[name] == "all" else threads}
            for name in STAGES}


def visible_gpus(config: ExperimentConfig) -> list[str]:
    if config.runtime.accelerator == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_threads(config: ExperimentConfig) -> int:
    return config.runtime.threads or os.cpu_count() or 1
