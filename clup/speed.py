"""Speed settings of `runtime`: channels-last memory format and `torch.compile` of the backbone.

Neither changes a model's state dict, so checkpoints load the same with or without them.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from clup.config import RuntimeConfig
from clup.models.backbones import Backbone
from clup.threads import follow_share


def to_channels_last(batch: Any) -> Any:
    """`batch` with every 4-D tensor in channels-last format, inside nested lists and tuples."""
    return apply_to_collection(batch, torch.Tensor, _image_channels_last)


def _image_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor


def compile_unavailable(device: torch.device) -> str | None:
    """Why `torch.compile` cannot run on `device` here, or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version or platform"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton, which torch.compile needs on GPUs, is not installed"
        if torch.cuda.get_device_capability(device) < (7, 0):
            return "Triton needs a GPU of compute capability 7.0 or newer"
        return None
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception:  # noqa: BLE001 - whatever the search raises, there is no compiler
            return "torch.compile needs a C++ compiler on the CPU and none was found"
        return None
    return f"torch.compile is not set up here for {device.type} devices"


def compile_backbones(module: nn.Module, device: torch.device) -> bool:
    """Compile every backbone's forward in place (its state-dict keys stay as they are).

    Returns whether it did; where `torch.compile` cannot run it warns and leaves the
    model as it is. A backbone already compiled (a second fit or test) is left alone.
    """
    reason = compile_unavailable(device)
    if reason is not None:
        rank_zero_warn(f"runtime.compile is true but skipped: {reason}")
        return False
    for backbone in module.modules():
        if isinstance(backbone, Backbone) and backbone._compiled_call_impl is None:
            # Static shapes: with dynamic ones Inductor fails on the CPU on SwAV's two crop
            # sizes (TypeError "Cannot convert expression to float", torch 2.14).
            backbone.compile(dynamic=False)
    return True


class FollowThreadShare(Callback):
    """Takes this process's current share of the CPU threads before each batch (it grows
    when a concurrent stage ends; see clup/threads.py). Outside a pool it does nothing."""

    def _follow(self, *_: Any) -> None:
        threads = follow_share()
        if threads is not None:
            print(f"[clup] CPU threads of this stage: now {threads}", flush=True)

    on_train_batch_start = on_predict_batch_start = on_test_batch_start = _follow


class SpeedSettings(Callback):
    """Applies `runtime.channels_last` and `runtime.compile` to the LightningModule.

    The inputs follow in `DomainDataModule.on_after_batch_transfer`.
    """

    def __init__(self, runtime: RuntimeConfig) -> None:
        self.runtime = runtime

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.runtime.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.runtime.compile:
            compile_backbones(pl_module, trainer.strategy.root_device)
