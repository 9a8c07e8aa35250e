"""Mixup (Zhang et al., ICLR 2018) for CluP stage 3: a batch mixed with a shuffled copy of it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, eq=False)
class MixedBatch:
    """inputs = lam * x + (1 - lam) * x[perm]; targets_a = y, targets_b = y[perm]."""

    inputs: Tensor
    targets_a: Tensor
    targets_b: Tensor
    lam: float


def _sample_beta(alpha: float, generator: torch.Generator | None) -> float:
    # torch.distributions.Beta cannot take a generator, so a 63-bit seed is drawn from the torch
    # generator (or the global torch RNG) and lam comes from a numpy Generator seeded with it.
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup_batch(
    x: Tensor, y: Tensor, alpha: float, generator: torch.Generator | None = None
) -> MixedBatch:
    """Mix a batch with a random permutation of itself, lam ~ Beta(alpha, alpha).

    alpha == 0 means no mixing: lam = 1, the inputs are returned unchanged and no random number
    is drawn. Otherwise lam is drawn first, then the permutation, both from generator (the
    global torch RNG when None), so a seeded generator gives the same batch every time.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}.")
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            "x must be [B, ...] and y must be [B] class indices with the same B, "
            f"got x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}."
        )
    if alpha == 0:
        return MixedBatch(inputs=x, targets_a=y, targets_b=y, lam=1.0)

    lam = _sample_beta(float(alpha), generator)
    device = generator.device if generator is not None else x.device
    perm = torch.randperm(len(x), generator=generator, device=device).to(x.device)
    return MixedBatch(inputs=lam * x + (1 - lam) * x[perm], targets_a=y, targets_b=y[perm], lam=lam)


def mixup_cross_entropy(logits: Tensor, batch: MixedBatch) -> Tensor:
    """lam * CE(logits, targets_a) + (1 - lam) * CE(logits, targets_b), each a batch mean."""
    if logits.ndim != 2 or len(logits) != len(batch.targets_a):
        raise ValueError(
            f"logits must be [B, C] with B = {len(batch.targets_a)} as in batch, "
            f"got shape {tuple(logits.shape)}."
        )
    loss_a = F.cross_entropy(logits, batch.targets_a)
    loss_b = F.cross_entropy(logits, batch.targets_b)
    return batch.lam * loss_a + (1 - batch.lam) * loss_b
