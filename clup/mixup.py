"""Mixup (Zhang et al., ICLR 2018) for CluP stage 3: a batch mixed with a shuffled copy of it.

Samples may carry weights (`finetune.pseudo_labels: weighted`, stage 1's ranking score): a
mixed sample weighs what its two parents weigh, mixed by the same lam.
"""

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
    """inputs = lam * x + (1 - lam) * x[perm]; targets_a = y, targets_b = y[perm];
    weights = lam * w + (1 - lam) * w[perm] when the samples have weights w, else None."""

    inputs: Tensor
    targets_a: Tensor
    targets_b: Tensor
    lam: float
    weights: Tensor | None = None


def _sample_beta(alpha: float, generator: torch.Generator | None) -> float:
    # torch.distributions.Beta cannot take a generator, so a 63-bit seed is drawn from the torch
    # generator (or the global torch RNG) and lam comes from a numpy Generator seeded with it.
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup_batch(
    x: Tensor,
    y: Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
    weights: Tensor | None = None,
) -> MixedBatch:
    """Mix a batch with a random permutation of itself, lam ~ Beta(alpha, alpha).

    alpha == 0 means no mixing: lam = 1, the inputs are returned unchanged and no random number
    is drawn. Otherwise lam is drawn first, then the permutation, both from generator (the
    global torch RNG when None), so a seeded generator gives the same batch every time.
    `weights` [B], one per sample, are mixed like the inputs; they draw no random number.
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
    if weights is not None and weights.shape != y.shape:
        raise ValueError(
            f"weights must be [B] with B = {len(y)} as in y, got shape {tuple(weights.shape)}."
        )
    if alpha == 0:
        return MixedBatch(inputs=x, targets_a=y, targets_b=y, lam=1.0, weights=weights)

    lam = _sample_beta(float(alpha), generator)
    device = generator.device if generator is not None else x.device
    perm = torch.randperm(len(x), generator=generator, device=device).to(x.device)
    mixed_weights = None if weights is None else lam * weights + (1 - lam) * weights[perm]
    return MixedBatch(inputs=lam * x + (1 - lam) * x[perm], targets_a=y, targets_b=y[perm],
                      lam=lam, weights=mixed_weights)


def mixup_cross_entropy(logits: Tensor, batch: MixedBatch) -> Tensor:
    """lam * CE(logits, targets_a) + (1 - lam) * CE(logits, targets_b), each a batch mean.

    With weights m_i (`batch.weights`), the weighted mean instead:
    ``sum_i m_i [lam CE_i(targets_a) + (1 - lam) CE_i(targets_b)] / sum_i m_i``. Since m is
    the mix of w with a permutation of itself, ``sum_i m_i = sum_i w_i``: the batch's own
    weights. A batch whose weights are all 0 has loss 0.
    """
    if logits.ndim != 2 or len(logits) != len(batch.targets_a):
        raise ValueError(
            f"logits must be [B, C] with B = {len(batch.targets_a)} as in batch, "
            f"got shape {tuple(logits.shape)}."
        )
    if batch.weights is None:
        loss_a = F.cross_entropy(logits, batch.targets_a)
        loss_b = F.cross_entropy(logits, batch.targets_b)
        return batch.lam * loss_a + (1 - batch.lam) * loss_b
    loss_a = F.cross_entropy(logits, batch.targets_a, reduction="none")
    loss_b = F.cross_entropy(logits, batch.targets_b, reduction="none")
    losses = batch.lam * loss_a + (1 - batch.lam) * loss_b
    weights = batch.weights.to(losses.dtype)
    # No sync with the device to test for 0: the clamp only matters when every weight is 0.
    return (weights * losses).sum() / weights.sum().clamp_min(torch.finfo(losses.dtype).tiny)
