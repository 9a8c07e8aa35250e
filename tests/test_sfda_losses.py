"""SFDA baseline losses (Tent, SHOT, NRC, AaD) checked against hand computations."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from clup.losses import (
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

EPS = 1e-5
Vector = Sequence[float]


def t(rows: Sequence[Vector] | Vector) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(got: Tensor, expected: list) -> bool:
    return torch.allclose(got, t(expected), rtol=0.0, atol=1e-12)


def softmax(z: Vector) -> list[float]:
    exps = [math.exp(v) for v in z]
    return [e / sum(exps) for e in exps]


def entropy_by_hand(p: Vector, eps: float = EPS) -> float:
    return -sum(v * math.log(v + eps) for v in p)


def dot(u: Vector, v: Vector) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def cosine(u: Vector, v: Vector) -> float:
    return dot(u, v) / math.sqrt(dot(u, u) * dot(v, v))


def unit(x: float, y: float) -> tuple[float, float]:
    norm = math.hypot(x, y)
    return x / norm, y / norm


def polar(degrees: float) -> tuple[float, float]:
    return math.cos(math.radians(degrees)), math.sin(math.radians(degrees))


def centroid(points: Sequence[Vector], weights: Vector) -> list[float]:
    """sum_i w_i x_i / sum_i w_i, SHOT's soft (or, with 0/1 weights, hard) centroid."""
    total = sum(weights)
    return [sum(w * x[d] for w, x in zip(weights, points, strict=True)) / total
            for d in range(len(points[0]))]


# --- entropy, Tent, information maximisation, SHOT loss -------------------------------------


def test_entropy_per_sample_by_hand() -> None:
    probs = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]
    got = entropy(t(probs))
    assert got.shape == (3,)
    for i, p in enumerate(probs):
        assert got[i].item() == pytest.approx(entropy_by_hand(p), abs=1e-12)
    assert got[0].item() == pytest.approx(math.log(2), abs=1e-4)
    assert got[1].item() == pytest.approx(0.0, abs=1e-4)
    assert entropy(t([0.25] * 4)).item() == pytest.approx(entropy_by_hand([0.25] * 4), abs=1e-12)


def test_tent_loss_is_mean_exact_entropy_of_softmax() -> None:
    logits = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, -1.0, 0.5]]
    expected = sum(entropy_by_hand(softmax(z), eps=0.0) for z in logits) / 3
    assert tent_loss(t(logits)).item() == pytest.approx(expected, abs=1e-12)


def test_information_maximization_by_hand() -> None:
    logits = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    probs = [softmax(z) for z in logits]
    mean_p = [(a + b) / 2 for a, b in zip(*probs, strict=True)]
    expected = sum(entropy_by_hand(p) for p in probs) / 2 - entropy_by_hand(mean_p)
    assert information_maximization(t(logits)).item() == pytest.approx(expected, abs=1e-12)


def test_information_maximization_rewards_confident_diverse_not_collapsed() -> None:
    diverse = 30.0 * torch.eye(3, dtype=torch.float64)
    collapsed = torch.tensor([[30.0, 0.0, 0.0]] * 3, dtype=torch.float64)
    assert information_maximization(diverse).item() == pytest.approx(-math.log(3), abs=1e-3)
    assert information_maximization(collapsed).item() == pytest.approx(0.0, abs=1e-3)
    # Uncertain per sample: mean H = H(mean) = log 3, so IM is 0 although the batch is diverse.
    assert information_maximization(torch.zeros(3, 3)).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("beta", [0.3, 0.1])
def test_shot_loss_is_beta_ce_plus_im(beta: float) -> None:
    logits = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]]
    labels = [0, 2, 2]
    ce = -sum(math.log(softmax(z)[y]) for z, y in zip(logits, labels, strict=True)) / 3
    probs = [softmax(z) for z in logits]
    mean_p = [sum(col) / 3 for col in zip(*probs, strict=True)]
    im = sum(entropy_by_hand(p) for p in probs) / 3 - entropy_by_hand(mean_p)
    got = shot_loss(t(logits), torch.tensor(labels), beta=beta)
    assert got.item() == pytest.approx(beta * ce + im, abs=1e-12)


def test_shot_loss_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="pseudo_labels must be \\[3\\]"):
        shot_loss(torch.zeros(3, 2), torch.tensor([0, 1]))


# --- SHOT centroid pseudo-labels ------------------------------------------------------------


def test_centroid_labels_soft_round_then_hard_round_by_hand() -> None:
    x1, x2, x3 = (1.0, 0.0), (-1.0, 0.0), unit(1.0, 1.0)
    features = [x1, x2, x3]
    probs = [[0.9, 0.1], [0.7, 0.3], [0.1, 0.9]]
    # Soft round: c_k = sum_i p_ik x_i / sum_i p_ik.
    soft = [centroid(features, [p[k] for p in probs]) for k in range(2)]
    first = [max(range(2), key=lambda k, x=x: cosine(x, soft[k])) for x in features]
    assert first == [0, 1, 1]  # x2 leaves class 0 although the network said 0
    # Hard round: c_0 = x1, c_1 = (x2 + x3) / 2; x3 is nearer x1 (0.707) than c_1 (0.383).
    hard = [x1, centroid([x2, x3], [1, 1])]
    assert cosine(x3, hard[0]) == pytest.approx(math.sqrt(0.5))
    assert cosine(x3, hard[1]) == pytest.approx(0.3827, abs=1e-4)
    second = [max(range(2), key=lambda k, x=x: cosine(x, hard[k])) for x in features]
    assert second == [0, 1, 0]

    args = (t(features), t(probs))
    assert shot_centroid_labels(*args, append_one=False, rounds=1).tolist() == first
    assert shot_centroid_labels(*args, append_one=False, rounds=2).tolist() == second
    assert shot_centroid_labels(*args, append_one=False).tolist() == second
    assert shot_centroid_labels(*args, append_one=False).dtype == torch.int64


def test_centroid_labels_append_one_before_normalising() -> None:
    features = t([(1.0, 0.0), (-1.0, 0.0), (1.0, 1.0)])
    probs = t([[0.9, 0.1], [0.7, 0.3], [0.1, 0.9]])
    padded = torch.cat([features, torch.ones(3, 1, dtype=torch.float64)], dim=1)
    with_one = shot_centroid_labels(features, probs)
    assert with_one.tolist() == shot_centroid_labels(padded, probs, append_one=False).tolist()
    assert with_one.tolist() != shot_centroid_labels(features, probs, append_one=False).tolist()


def test_class_nobody_predicts_gets_no_centroid_in_the_soft_round() -> None:
    x1, x2, x3 = (1.0, 0.0), (0.0, 1.0), unit(1.0, 1.0)
    probs = [[0.5, 0.1, 0.4], [0.1, 0.5, 0.4], [0.46, 0.1, 0.44]]  # nobody's argmax is class 2
    soft = [centroid([x1, x2, x3], [p[k] for p in probs]) for k in range(3)]
    # Class 2's soft centroid points along (1, 1): x3 would take it if it were a candidate.
    assert cosine(x3, soft[2]) == pytest.approx(1.0)
    assert max(cosine(x3, soft[0]), cosine(x3, soft[1])) < 0.96
    assert cosine(x3, soft[0]) > cosine(x3, soft[1])
    labels = shot_centroid_labels(t([x1, x2, x3]), t(probs), append_one=False, rounds=1)
    assert labels.tolist() == [0, 1, 0]


def test_class_emptied_by_the_soft_round_gets_no_centroid_in_the_hard_round() -> None:
    v, w1, w2 = (-1.0, 0.0), unit(1.0, 0.2), unit(1.0, -0.3)
    features = [v, w1, w2, w1, w2]
    probs = [[1.0, 0.0, 0.0]] * 3 + [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # Round 1 (one-hot probs): c_0 = mean(v, w1, w2) points away from v; w1 -> 1, w2 -> 2.
    c = [centroid(features[:3], [1, 1, 1]), w1, w2]
    assert [cosine(v, ck) for ck in c] == sorted(cosine(v, ck) for ck in c)
    # Round 2: class 0 is empty; v has a negative cosine to both remaining centroids, so a zero
    # class-0 centroid (cosine 0) would win if class 0 were still a candidate.
    c1, c2 = centroid([w1, w1], [1, 1]), centroid([v, w2, w2], [1, 1, 1])
    assert cosine(v, c1) < cosine(v, c2) < 0
    assert cosine(w2, c2) > cosine(w2, c1)
    labels = shot_centroid_labels(t(features), t(probs), append_one=False, rounds=2)
    assert labels.tolist() == [2, 1, 2, 1, 2]


def test_centroid_labels_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="features must be a 2-D tensor with 3 rows"):
        shot_centroid_labels(torch.zeros(2, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        shot_centroid_labels(torch.zeros(3, 4), torch.zeros(3, 2), rounds=0)


# --- nearest neighbours and NRC -------------------------------------------------------------

# Six unit features on the circle at these angles: cosine order is angular-distance order.
ANGLES = [0.0, 10.0, 30.0, 100.0, 115.0, 210.0]
# Each row's two nearest other rows, by hand from the angles (no ties among the top two).
TWO_NEAREST = [[1, 2], [0, 2], [1, 0], [4, 2], [3, 2], [4, 3]]
BATCH = [0, 3, 5]
SCORE_BANK = [
    [0.7, 0.2, 0.1],
    [0.6, 0.3, 0.1],
    [0.5, 0.1, 0.4],
    [0.1, 0.8, 0.1],
    [0.2, 0.7, 0.1],
    [0.1, 0.1, 0.8],
]
PROBS = [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6]]


def feature_bank() -> Tensor:
    return t([polar(a) for a in ANGLES])


def test_nearest_neighbours_by_hand_and_self_excluded() -> None:
    bank = feature_bank()
    everyone = torch.arange(6)
    assert nearest_neighbours(bank, bank, 2, exclude=everyone).tolist() == TWO_NEAREST
    assert nearest_neighbours(bank, bank, 1)[:, 0].tolist() == list(range(6))
    # A duplicate of the query is still returned; only the excluded row itself is not.
    duplicated = torch.cat([bank, bank[:1]])
    assert nearest_neighbours(bank[:1], duplicated, 2, exclude=torch.tensor([0])).tolist() == [
        [6, 1]
    ]
    # Cosine, not dot product: scaling a bank row changes nothing.
    scaled = bank * t([1.0, 5.0, 0.2, 1.0, 3.0, 1.0])[:, None]
    assert nearest_neighbours(scaled, scaled, 2, exclude=everyone).tolist() == TWO_NEAREST


def test_nearest_neighbours_rejects_k_beyond_the_bank() -> None:
    bank = feature_bank()
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 5\\]"):
        nearest_neighbours(bank[:1], bank, 6, exclude=torch.tensor([0]))


def test_nrc_weights_mutual_neighbours_by_hand() -> None:
    hood = nrc_weights(feature_bank(), torch.tensor(BATCH), k=2, kk=2)
    # Anchor 0: neighbours 1 and 2 both list 0 -> mutual. Anchor 3: 4 lists 3, 2 does not.
    # Anchor 5: neither 4 nor 3 lists 5.
    assert hood.near.tolist() == [[1, 2], [4, 2], [4, 3]]
    assert close(hood.near_weight, [[1.0, 1.0], [1.0, 0.1], [0.1, 0.1]])
    assert hood.expanded.tolist() == [[[0, 2], [1, 0]], [[3, 2], [1, 0]], [[3, 2], [4, 2]]]
    # The anchor itself reappears among its neighbours' neighbours and keeps weight 0.1.
    assert close(hood.expanded_weight, [[[0.1, 0.1]] * 2] * 3)

    no_self = nrc_weights(feature_bank(), torch.tensor(BATCH), k=2, kk=2, self_weight=0.0)
    assert close(
        no_self.expanded_weight,
        [[[0.0, 0.1], [0.1, 0.0]], [[0.0, 0.1], [0.1, 0.1]], [[0.1, 0.1], [0.1, 0.1]]],
    )
    assert no_self.near_weight.tolist() == hood.near_weight.tolist()


def test_nrc_mutuality_is_checked_against_the_kk_list() -> None:
    # With KK = 1, neighbour 2 of anchor 0 lists only 1, so 0 is no longer mutual for it.
    hood = nrc_weights(feature_bank(), torch.tensor([0]), k=2, kk=1)
    assert hood.expanded.tolist() == [[[0], [1]]]
    assert close(hood.near_weight, [[1.0, 0.1]])


@pytest.mark.parametrize("self_weight", [0.1, 0.0])
def test_nrc_loss_by_explicit_loops(self_weight: float) -> None:
    near = [TWO_NEAREST[i] for i in BATCH]
    near_weight = [[1.0, 1.0], [1.0, 0.1], [0.1, 0.1]]
    affinity = []
    for b, anchor in enumerate(BATCH):
        total = 0.0
        for j, w in zip(near[b], near_weight[b], strict=True):
            total += w * dot(PROBS[b], SCORE_BANK[j])
            for m in TWO_NEAREST[j]:
                total += (self_weight if m == anchor else 0.1) * dot(PROBS[b], SCORE_BANK[m])
        affinity.append(total)
    mean_p = [sum(col) / 3 for col in zip(*PROBS, strict=True)]
    expected = -sum(affinity) / 3 + sum(p * math.log(p + EPS) for p in mean_p)

    got = nrc_loss(t(PROBS), feature_bank(), t(SCORE_BANK), torch.tensor(BATCH), k=2, kk=2,
                   self_weight=self_weight)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_bank_losses_reject_mismatched_indices() -> None:
    with pytest.raises(ValueError, match="one bank row per row of probs"):
        nrc_loss(t(PROBS), feature_bank(), t(SCORE_BANK), torch.tensor([0, 1]), k=2, kk=2)
    with pytest.raises(ValueError, match="indices must lie in \\[0, 6\\)"):
        aad_loss(t(PROBS), feature_bank(), t(SCORE_BANK), torch.tensor([0, 1, 6]), k=2)


# --- AaD and schedules ----------------------------------------------------------------------


def aad_by_hand(probs: list[list[float]], alpha: float) -> float:
    attraction = sum(
        dot(probs[b], SCORE_BANK[j]) for b, i in enumerate(BATCH) for j in TWO_NEAREST[i]
    ) / len(BATCH)
    dispersion = sum(
        dot(probs[a], probs[b]) for a in range(3) for b in range(3) if a != b
    ) / len(BATCH)
    return -attraction + alpha * dispersion


@pytest.mark.parametrize("alpha", [1.0, 0.7, 0.0])
def test_aad_loss_by_explicit_loops(alpha: float) -> None:
    got = aad_loss(t(PROBS), feature_bank(), t(SCORE_BANK), torch.tensor(BATCH), k=2, alpha=alpha)
    assert got.item() == pytest.approx(aad_by_hand(PROBS, alpha), abs=1e-12)


def test_aad_dispersion_gradient_flows_through_both_sides() -> None:
    probs = t(PROBS).requires_grad_()
    alpha = 0.7
    aad_loss(probs, feature_bank(), t(SCORE_BANK), torch.tensor(BATCH), k=2, alpha=alpha).backward()
    # d/dp_i = -(1/B) sum_{j in N(i)} s_j + alpha * (2/B) sum_{j != i} p_j
    for b, i in enumerate(BATCH):
        for c in range(3):
            pull = sum(SCORE_BANK[j][c] for j in TWO_NEAREST[i]) / 3
            push = 2 * sum(PROBS[o][c] for o in range(3) if o != b) / 3
            assert probs.grad[b, c].item() == pytest.approx(-pull + alpha * push, abs=1e-12)


@pytest.mark.parametrize(
    ("progress", "expected"), [(0.0, 1.0), (0.5, 6.0**-5), (1.0, 11.0**-5)]
)
def test_aad_alpha(progress: float, expected: float) -> None:
    assert aad_alpha(progress) == pytest.approx(expected, rel=1e-12)
    assert aad_alpha(progress, alpha0=2.0, beta=0.75) == pytest.approx(
        2.0 * (1 + 10 * progress) ** -0.75, rel=1e-12
    )


@pytest.mark.parametrize(
    ("progress", "expected"), [(0.0, 1.0), (0.5, 6.0**-0.75), (1.0, 11.0**-0.75)]
)
def test_shot_lr_factor(progress: float, expected: float) -> None:
    assert shot_lr_factor(progress) == pytest.approx(expected, rel=1e-12)
    assert shot_lr_factor(progress, gamma=5.0, power=1.0) == pytest.approx(
        1 / (1 + 5 * progress), rel=1e-12
    )


def test_schedules_reject_progress_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="progress must be a number in \\[0, 1\\]"):
        shot_lr_factor(1.5)
    with pytest.raises(ValueError, match="progress must be a number in \\[0, 1\\]"):
        aad_alpha(-0.1)


# --- gradients ------------------------------------------------------------------------------


def _bank_kwargs() -> dict[str, Tensor]:
    return {"feature_bank": feature_bank(), "score_bank": t(SCORE_BANK),
            "indices": torch.tensor(BATCH)}


LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "tent": tent_loss,
    "information_maximization": information_maximization,
    "shot": lambda z: shot_loss(z, torch.tensor([0, 1, 2])),
    "nrc": lambda z: nrc_loss(z.softmax(dim=1), k=2, kk=2, **_bank_kwargs()),
    "aad": lambda z: aad_loss(z.softmax(dim=1), k=2, alpha=0.5, **_bank_kwargs()),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_is_differentiable_in_the_logits(name: str) -> None:
    logits = t([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-3.0, 0.5, 30.0]]).requires_grad_()
    loss = LOSSES[name](logits)
    assert loss.ndim == 0
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
