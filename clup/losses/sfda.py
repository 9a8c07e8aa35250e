"""Losses of the source-free baselines CluP is compared with: Tent, SHOT, NRC and AaD.

Plain functions on tensors, testable without a Trainer. The caller owns every piece of state:
the NRC/AaD feature and score banks are passed in (already updated at the batch indices), and
training progress is passed as a number in [0, 1] (iteration / max_iterations).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# NRC gives this weight to a neighbour that is not mutual and to every expanded neighbour.
_NRC_WEAK_WEIGHT = 0.1


def _check_matrix(name: str, x: Tensor, rows: int | None = None) -> None:
    if x.ndim != 2 or (rows is not None and x.shape[0] != rows):
        expected = "a 2-D tensor" + (f" with {rows} rows" if rows is not None else "")
        raise ValueError(f"{name} must be {expected}, got shape {tuple(x.shape)}.")


def _at_least_float32(x: Tensor) -> Tensor:
    """bf16 or fp16 logits in float32: CPU autocast would keep their softmax in bf16, too
    coarse for entropies."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_progress(progress: float) -> None:
    if isinstance(progress, bool) or not isinstance(progress, Real) or not 0 <= progress <= 1:
        raise ValueError(f"progress must be a number in [0, 1], got {progress!r}.")


def _check_indices(indices: Tensor, bank_size: int) -> None:
    if indices.ndim != 1 or indices.dtype != torch.long:
        raise ValueError(
            f"indices must be a 1-D int64 tensor of bank rows, got shape {tuple(indices.shape)} "
            f"and dtype {indices.dtype}."
        )
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= bank_size):
        raise ValueError(f"indices must lie in [0, {bank_size}), the bank's rows.")


def _check_banks(probs: Tensor, feature_bank: Tensor, score_bank: Tensor, indices: Tensor) -> None:
    _check_matrix("probs", probs)
    _check_matrix("feature_bank", feature_bank)
    _check_matrix("score_bank", score_bank, rows=feature_bank.shape[0])
    if score_bank.shape[1] != probs.shape[1]:
        raise ValueError(
            f"score_bank and probs must have the same number of classes, got "
            f"{score_bank.shape[1]} and {probs.shape[1]}."
        )
    _check_indices(indices, feature_bank.shape[0])
    if len(indices) != probs.shape[0]:
        raise ValueError(
            f"indices must give one bank row per row of probs ({probs.shape[0]}), "
            f"got {len(indices)}."
        )


def entropy(probs: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-sample Shannon entropy ``H(p) = -sum_c p_c log(p_c + eps)`` over the last dimension.

    The eps inside the log is SHOT's (Liang et al., ICML 2020, ``loss.Entropy``); it keeps the
    gradient finite where a probability is exactly 0. ``[N, C]`` gives ``[N]``, ``[C]`` a scalar.
    """
    return -(probs * torch.log(probs + eps)).sum(dim=-1)


def tent_loss(logits: Tensor) -> Tensor:
    """Tent (Wang et al., ICLR 2021): ``mean_i H(softmax(z_i))``, ``H(p) = -sum_c p_c log p_c``.

    As in Tent's code the log is ``log_softmax(z)``, exact and without eps.
    """
    _check_matrix("logits", logits)
    logits = _at_least_float32(logits)
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1).mean()


def information_maximization(logits: Tensor, eps: float = 1e-5) -> Tensor:
    """SHOT's information maximisation (Liang et al., ICML 2020).

    ``L_IM = mean_i H(p_i) - H(mean_i p_i)`` with ``p_i = softmax(z_i)`` and ``H`` as in
    :func:`entropy`: confident per-sample predictions (first term small) that are diverse over
    the batch (second term large). Lies in ``[-log C, log C]`` up to eps.
    """
    _check_matrix("logits", logits)
    probs = _at_least_float32(logits).softmax(dim=1)
    return entropy(probs, eps).mean() - entropy(probs.mean(dim=0), eps)


def shot_loss(
    logits: Tensor, pseudo_labels: Tensor, beta: float = 0.3, eps: float = 1e-5
) -> Tensor:
    """SHOT's adaptation loss (Liang et al., ICML 2020).

    ``beta * CE(z, y_hat) + L_IM(z)``: plain cross-entropy (no label smoothing, unlike SHOT's
    source training) on the centroid pseudo-labels y_hat of :func:`shot_centroid_labels`, plus
    :func:`information_maximization`.
    """
    _check_matrix("logits", logits)
    if pseudo_labels.shape != (logits.shape[0],):
        raise ValueError(
            f"pseudo_labels must be [{logits.shape[0]}] class indices as logits has "
            f"{logits.shape[0]} rows, got shape {tuple(pseudo_labels.shape)}."
        )
    return beta * F.cross_entropy(logits, pseudo_labels) + information_maximization(logits, eps)


@torch.no_grad()
def shot_centroid_labels(
    features: Tensor, probs: Tensor, append_one: bool = True, rounds: int = 2
) -> Tensor:
    """SHOT's self-supervised pseudo-labels over the whole target set (Liang et al., ICML 2020).

    Features get a constant 1 appended (``append_one``) and are L2-normalised. The first round
    uses soft centroids ``c_k = sum_i p_ik f_i / (1e-8 + sum_i p_ik)``; each of the other
    ``rounds - 1`` rounds uses hard centroids ``c_k = mean of the f_i labelled k`` in the round
    before. Each round labels a sample ``argmax_k cos(f_i, c_k)``.

    Only classes with at least one sample in the current hard labelling (SHOT's ``labelset``,
    ``count > threshold = 0``) are candidates: the network's argmax before the first round, the
    previous round's labels after. A class nobody is labelled with has a meaningless (soft:
    near-empty; hard: zero) centroid, so it can never be given. Deterministic: ties go to the
    lowest class index. Returns ``[N]`` int64 labels.
    """
    _check_matrix("probs", probs)
    _check_matrix("features", features, rows=probs.shape[0])
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}.")
    num_classes = probs.shape[1]
    if append_one:
        features = torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)
    features = F.normalize(features, dim=1)
    labels = probs.argmax(dim=1)
    affinity = probs.to(features.dtype)
    for _ in range(rounds):
        centroids = affinity.T @ features / (1e-8 + affinity.sum(dim=0)[:, None])
        similarity = features @ F.normalize(centroids, dim=1).T
        is_candidate = torch.bincount(labels, minlength=num_classes) > 0
        similarity[:, ~is_candidate] = -math.inf
        labels = similarity.argmax(dim=1)
        affinity = F.one_hot(labels, num_classes).to(features.dtype)
    return labels


@torch.no_grad()
def nearest_neighbours(
    query: Tensor, bank: Tensor, k: int, exclude: Tensor | None = None
) -> Tensor:
    """Indices ``[B, k]`` of the k bank rows most cosine-similar to each query row, best first.

    ``exclude[b]`` is a bank index that row b may not return (its own entry). The NRC and AaD
    reference code instead takes the top k+1 and drops the first, which is the same whenever
    a sample's own entry is strictly its nearest; masking also holds for duplicate features.
    """
    _check_matrix("query", query)
    _check_matrix("bank", bank)
    if query.shape[1] != bank.shape[1]:
        raise ValueError(
            f"query and bank must have the same feature size, got {query.shape[1]} and "
            f"{bank.shape[1]}."
        )
    available = bank.shape[0] - (exclude is not None)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
        raise ValueError(f"k must be an integer in [1, {available}] for this bank, got {k!r}.")
    similarity = F.normalize(query, dim=1) @ F.normalize(bank, dim=1).T
    if exclude is not None:
        if exclude.shape != (query.shape[0],):
            raise ValueError(
                f"exclude must be [{query.shape[0]}] bank indices, one per query row, "
                f"got shape {tuple(exclude.shape)}."
            )
        similarity[torch.arange(query.shape[0], device=similarity.device), exclude] = -math.inf
    return similarity.topk(k, dim=1).indices


class NRCNeighbourhood(NamedTuple):
    """NRC's neighbours of a batch and their affinity weights (B anchors, K and KK per level)."""

    near: Tensor  # [B, K] bank indices of each anchor's K nearest neighbours
    near_weight: Tensor  # [B, K] 1 if mutual, else 0.1
    expanded: Tensor  # [B, K, KK] bank indices of each neighbour's KK nearest neighbours
    expanded_weight: Tensor  # [B, K, KK] 0.1, self_weight where the entry is the anchor


@torch.no_grad()
def nrc_weights(
    feature_bank: Tensor, indices: Tensor, k: int = 5, kk: int = 5, self_weight: float = 0.1
) -> NRCNeighbourhood:
    """Neighbours and affinities of NRC (Yang et al., NeurIPS 2021, Albert0147/NRC_SFDA).

    Anchor i is bank row ``indices[i]``. Its K neighbours are its K most cosine-similar bank
    rows, itself excluded. Each neighbour j's KK neighbours are found from j's bank feature
    the same way, j excluded (the anchor is not: it may appear among them). As in the reference
    code, neighbour j has weight 1 when the anchor is among j's KK neighbours (mutual), else
    0.1; with K = KK this is "among j's K nearest". Expanded entries have weight 0.1, except
    that an entry equal to the anchor itself gets ``self_weight``: 0.1 is the reference
    (which keeps the anchor as implicit self-regularisation), 0 its commented-out variant.
    """
    _check_indices(indices, feature_bank.shape[0])
    near = nearest_neighbours(feature_bank[indices], feature_bank, k, exclude=indices)
    flat_near = near.reshape(-1)
    expanded = nearest_neighbours(feature_bank[flat_near], feature_bank, kk, exclude=flat_near)
    expanded = expanded.reshape(near.shape[0], k, kk)
    is_anchor = expanded == indices[:, None, None]
    weak = torch.full(near.shape, _NRC_WEAK_WEIGHT, dtype=feature_bank.dtype, device=near.device)
    near_weight = torch.where(is_anchor.any(dim=2), torch.ones_like(weak), weak)
    expanded_weight = torch.full_like(expanded, _NRC_WEAK_WEIGHT, dtype=weak.dtype)
    expanded_weight[is_anchor] = self_weight
    return NRCNeighbourhood(near, near_weight, expanded, expanded_weight)


def nrc_loss(
    probs: Tensor,
    feature_bank: Tensor,
    score_bank: Tensor,
    indices: Tensor,
    k: int = 5,
    kk: int = 5,
    self_weight: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """NRC's loss (Yang et al., NeurIPS 2021, "Exploiting the intrinsic neighborhood structure").

    ``-mean_i [sum_j w_ij <p_i, s_j> + sum_m w_im <p_i, s_m>] + sum_c pbar_c log(pbar_c + eps)``
    over the K neighbours j and the K*KK expanded neighbours m of :func:`nrc_weights`, with
    ``s`` the score bank and ``pbar = mean_i p_i`` the batch's mean prediction (diversity).

    ``probs`` ``[B, C]`` are the batch's softmax outputs (the only input with a gradient);
    ``feature_bank`` ``[N, D]`` and ``score_bank`` ``[N, C]`` must already hold this batch at
    ``indices``. The reference writes the affinity as ``F.kl_div(p, s)`` without a log on p,
    which is ``sum_c s log s - <p, s>``: the same gradient, the constant dropped here.
    """
    _check_banks(probs, feature_bank, score_bank, indices)
    hood = nrc_weights(feature_bank, indices, k, kk, self_weight)
    score_bank = score_bank.detach()
    near = torch.einsum("bc,bkc->bk", probs, score_bank[hood.near]) * hood.near_weight
    expanded = torch.einsum("bc,bkmc->bkm", probs, score_bank[hood.expanded])
    affinity = near.sum(dim=1) + (expanded * hood.expanded_weight).sum(dim=(1, 2))
    return -affinity.mean() - entropy(probs.mean(dim=0), eps)


def aad_loss(
    probs: Tensor,
    feature_bank: Tensor,
    score_bank: Tensor,
    indices: Tensor,
    k: int = 5,
    alpha: float = 1.0,
) -> Tensor:
    """AaD's loss (Yang et al., NeurIPS 2022, "Attracting and dispersing").

    ``-mean_i sum_{j in N_K(i)} <p_i, s_j> + alpha * mean_i sum_{j != i in batch} <p_i, p_j>``:
    attraction to the scores of the K nearest bank neighbours (as in :func:`nrc_weights`,
    self excluded) and dispersion from every other sample of the batch. As in the reference,
    the dispersion's gradient flows through both p_i and p_j. Banks as in :func:`nrc_loss`;
    ``alpha`` is usually :func:`aad_alpha` of the training progress.
    """
    _check_banks(probs, feature_bank, score_bank, indices)
    near = nearest_neighbours(feature_bank[indices], feature_bank, k, exclude=indices)
    attraction = torch.einsum("bc,bkc->b", probs, score_bank.detach()[near]).mean()
    similarity = probs @ probs.T
    dispersion = (similarity.sum(dim=1) - similarity.diagonal()).mean()
    return -attraction + alpha * dispersion


def aad_alpha(progress: float, alpha0: float = 1.0, beta: float = 5.0) -> float:
    """AaD's dispersion weight (Yang et al., NeurIPS 2022): ``alpha0 * (1 + 10 p)^-beta``.

    ``progress`` p is iteration / max_iterations in [0, 1].
    """
    _check_progress(progress)
    return alpha0 * (1 + 10 * progress) ** -beta


def shot_lr_factor(progress: float, gamma: float = 10.0, power: float = 0.75) -> float:
    """SHOT's learning-rate decay (Liang et al., ICML 2020), also NRC's and AaD's.

    ``lr = lr0 * (1 + gamma * p)^-power`` with ``progress`` p = iteration / max_iterations in
    [0, 1]; returns the factor multiplying lr0.
    """
    _check_progress(progress)
    return (1 + gamma * progress) ** -power
