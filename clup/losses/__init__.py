"""Losses as plain functions on tensors, testable without a Trainer."""

from clup.losses.sfda import (
    NRCNeighbourhood,
    aad_alpha,
    aad_loss,
    entropy,
    information_maximization,
    nearest_neighbours,
    nrc_loss,
    nrc_weights,
    shot_centroid_labels,
    shot_loss,
    shot_lr_factor,
    tent_loss,
)

__all__ = [
    "NRCNeighbourhood",
    "aad_alpha",
    "aad_loss",
    "entropy",
    "information_maximization",
    "nearest_neighbours",
    "nrc_loss",
    "nrc_weights",
    "shot_centroid_labels",
    "shot_loss",
    "shot_lr_factor",
    "tent_loss",
]
