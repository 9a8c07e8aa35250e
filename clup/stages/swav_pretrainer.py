"""Stage 2: SwAV self-supervised pretraining on the unlabelled target images.

SwAV (Caron et al., NeurIPS 2020): online clustering of multi-crop views with
Sinkhorn-Knopp codes and swapped prediction. Heads and loss come from lightly.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import nn

from clup.config import ExperimentConfig, SwAVConfig
from clup.data.datamodule import DomainDataModule
from clup.io import write_json
from clup.models.backbones import Backbone, build_backbone
from clup.models.checkpoint import save_backbone
from clup.registry import StagePaths
from clup.stages.common import close_stage, configure_optimizer, fit_stage


class SwAVPretrainer(L.LightningModule):
    def __init__(self, backbone: Backbone, config: SwAVConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.projection_head = SwaVProjectionHead(
            backbone.out_dim, config.projection_hidden_dim, config.projection_dim
        )
        self.prototypes = SwaVPrototypes(config.projection_dim, config.n_prototypes)
        self.criterion = SwaVLoss(
            temperature=config.temperature,
            sinkhorn_iterations=config.sinkhorn_iterations,
            sinkhorn_epsilon=config.sinkhorn_epsilon,
            # With several ranks the codes are computed over the global batch, as in SwAV.
            sinkhorn_gather_distributed=True,
        )
        # One queue per global crop, as in SwAV: small batches get more samples for Sinkhorn.
        self.queues = nn.ModuleList(
            MemoryBankModule(size=(config.queue_length, config.projection_dim),
                             feature_dim_first=False)
            for _ in range(config.n_global_crops if config.queue_length else 0)
        )
        # Each rank keeps its own queue, as in SwAV; DDP would otherwise overwrite every
        # rank's queue with rank 0's before each step (it broadcasts buffers).
        self._ddp_params_and_buffers_to_ignore = [
            f"queues.{name}" for name, _ in self.queues.named_buffers()]

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Normalised projections of equally sized views, computed in one pass."""
        projections = self.projection_head(self.backbone(torch.cat(views)))
        return F.normalize(projections, dim=1)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Prototype scores outside autocast, at the prototypes' precision: Sinkhorn's
        `exp(score / epsilon)` would turn bf16's rounding of the scores into codes off by
        several per cent."""
        dtype = next(self.prototypes.parameters()).dtype
        with torch.autocast(self.device.type, enabled=False):
            return self.prototypes(z.to(dtype))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views, _, _ = batch
        self.prototypes.normalize()
        n_global = self.config.n_global_crops
        global_z = self.embed(views[:n_global]).chunk(n_global)
        local_views = views[n_global:]
        local_z = self.embed(local_views).chunk(len(local_views)) if local_views else ()
        loss = self.criterion(
            high_resolution_outputs=[self.scores(z) for z in global_z],
            low_resolution_outputs=[self.scores(z) for z in local_z],
            queue_outputs=self._queue_outputs(global_z),
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(global_z[0]), sync_dist=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"],
                 batch_size=len(global_z[0]))
        return loss

    def _queue_outputs(self, global_z: tuple[torch.Tensor, ...]) -> list[torch.Tensor] | None:
        if not self.queues:
            return None
        banks = [queue(z.detach(), update=True)[1] for queue, z in zip(self.queues, global_z,
                                                                        strict=True)]
        if self.current_epoch < self.config.queue_start_epoch:
            return None
        with torch.no_grad():
            return [self.scores(bank) for bank in banks]

    def on_after_backward(self) -> None:
        # SwAV keeps the prototypes fixed for the first epoch(s) so the codes can settle.
        if self.current_epoch < self.config.freeze_prototypes_epochs:
            for parameter in self.prototypes.parameters():
                parameter.grad = None

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizer(self, self.parameters(), self.config.optimizer)


def run(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """Pretrain (resuming from the last epoch) and write the stage's `backbone`."""
    datamodule = DomainDataModule(
        config.require_target(), config.classes, config.preprocessing,
        batch_size=config.swav.batch_size, runtime=config.runtime,
        train_views="multicrop", swav=config.swav,
    )
    module = SwAVPretrainer(build_backbone(config.backbone), config.swav)
    trainer = fit_stage(config, paths.folder, paths.name, module, datamodule,
                        config.swav.epochs)
    final_loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    if trainer.is_global_zero:
        save_backbone(paths.output("backbone"), module.backbone, config.backbone)
        write_json(paths.output("metrics"),
                   {"final_loss": final_loss, "epochs": config.swav.epochs})
    close_stage(trainer, paths.folder)
    return {"final_loss": final_loss}
