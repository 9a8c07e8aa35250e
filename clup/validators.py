"""Label-free measures of an adapted model: arrays of softmax probabilities in, a number out.

Computed on the target *train* split after adaptation, so they read no label and a user
without target labels has them too. Higher is better for every one here, so a grid can
pick the run with the largest value; how far each can be trusted is measured, not assumed
(docs/methods.md, "Choosing CluP+").
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5
"""Added inside the logarithm, as SHOT's `Entropy` does (tim-learn/SHOT object/loss.py)."""


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or not len(probs):
        raise ValueError(f"probs must be a non-empty [N, C] array, got shape {probs.shape}")
    return probs


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(probs + EPS)).sum(axis=-1)


def negative_entropy(probs: np.ndarray) -> float:
    """Minus the mean entropy of the predictions (nats): confident predictions score high.
    The entropy validator of Morerio et al. (ICLR 2018) as Musgrave et al. (2022) use it."""
    return float(-_entropy(_check(probs)).mean())


def information_maximization(probs: np.ndarray) -> float:
    """SHOT's information maximisation, negated to be a score: the entropy of the mean
    prediction minus the mean entropy (Liang et al., ICML 2020; `clup.losses.
    information_maximization` is the loss, its negative). High for confident predictions
    spread over the classes; `log C` at most."""
    probs = _check(probs)
    return float(_entropy(probs.mean(axis=0)) - _entropy(probs).mean())


VALIDATORS = {"neg_entropy": negative_entropy, "im": information_maximization}
"""Name -> validator; the names are the keys of a run's `train_split` metrics."""


def label_free_measures(probs: np.ndarray) -> dict[str, float]:
    """Every validator of `VALIDATORS` on one set of predictions."""
    return {name: validator(probs) for name, validator in VALIDATORS.items()}
