"""Mixup batch and loss checked by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from clup.mixup import MixedBatch, mixup_batch, mixup_cross_entropy


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_lam_lies_in_unit_interval_and_varies() -> None:
    x, y = torch.randn(4, 3), torch.arange(4)
    lams = [mixup_batch(x, y, 0.2, seeded(seed)).lam for seed in range(200)]
    assert all(isinstance(lam, float) and 0.0 <= lam <= 1.0 for lam in lams)
    assert len(set(lams)) > 150
    # Beta(0.2, 0.2) is U-shaped and symmetric about 1/2.
    assert sum(min(lam, 1 - lam) < 0.1 for lam in lams) > 100
    assert 0.35 < sum(lams) / len(lams) < 0.65


def test_alpha_zero_leaves_the_batch_alone_and_draws_nothing() -> None:
    x, y = torch.randn(5, 2), torch.arange(5)
    generator = seeded(0)
    state = generator.get_state()
    batch = mixup_batch(x, y, 0.0, generator)
    assert batch.lam == 1.0
    assert torch.equal(batch.inputs, x)
    assert torch.equal(batch.targets_a, y)
    assert torch.equal(batch.targets_b, y)
    assert torch.equal(generator.get_state(), state)


def test_inputs_are_the_convex_combination_by_hand() -> None:
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0], [10.0, -6.0]], dtype=torch.float64)
    y = torch.arange(3)
    batch = mixup_batch(x, y, 1.0, seeded(3))
    lam, perm = batch.lam, batch.targets_b.tolist()
    assert torch.equal(batch.targets_a, y)
    for i in range(3):
        for j in range(2):
            expected = lam * x[i, j].item() + (1 - lam) * x[perm[i], j].item()
            assert batch.inputs[i, j].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("size", [1, 2, 7, 32])
def test_targets_b_is_a_permutation_of_the_batch(size: int) -> None:
    for seed in range(20):
        batch = mixup_batch(torch.zeros(size, 1), torch.arange(size), 0.2, seeded(seed))
        assert sorted(batch.targets_b.tolist()) == list(range(size))


def test_seeded_generator_gives_the_same_batch() -> None:
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    first, second = mixup_batch(x, y, 0.2, seeded(7)), mixup_batch(x, y, 0.2, seeded(7))
    assert first.lam == second.lam
    assert torch.equal(first.inputs, second.inputs)
    assert torch.equal(first.targets_b, second.targets_b)
    other = mixup_batch(x, y, 0.2, seeded(8))
    assert (other.lam, other.targets_b.tolist()) != (first.lam, first.targets_b.tolist())


def test_global_seed_makes_the_default_generator_deterministic() -> None:
    x, y = torch.randn(6, 2), torch.arange(6)
    torch.manual_seed(11)
    first = mixup_batch(x, y, 0.2)
    torch.manual_seed(11)
    second = mixup_batch(x, y, 0.2)
    assert first.lam == second.lam
    assert torch.equal(first.targets_b, second.targets_b)


def test_low_precision_inputs_keep_their_dtype() -> None:
    batch = mixup_batch(torch.ones(4, 2, dtype=torch.bfloat16), torch.arange(4), 0.2, seeded(0))
    assert batch.inputs.dtype == torch.bfloat16


def test_loss_equals_the_hand_computation() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], dtype=torch.float64)
    batch = MixedBatch(
        inputs=torch.zeros(2),
        targets_a=torch.tensor([0, 1]),
        targets_b=torch.tensor([2, 0]),
        lam=0.3,
    )

    def cross_entropy(targets: list[int]) -> float:
        losses = []
        for row, target in zip(logits.tolist(), targets, strict=True):
            log_partition = math.log(sum(math.exp(value) for value in row))
            losses.append(log_partition - row[target])
        return sum(losses) / len(losses)

    expected = 0.3 * cross_entropy([0, 1]) + 0.7 * cross_entropy([2, 0])
    assert mixup_cross_entropy(logits, batch).item() == pytest.approx(expected, rel=1e-12)


def test_loss_is_differentiable() -> None:
    logits = torch.randn(4, 7, requires_grad=True)
    batch = mixup_batch(torch.randn(4, 3), torch.tensor([0, 6, 2, 2]), 0.2, seeded(1))
    mixup_cross_entropy(logits, batch).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: mixup_batch(torch.zeros(2, 1), torch.arange(2), -0.1), "alpha"),
        (lambda: mixup_batch(torch.zeros(2, 1), torch.arange(2), float("inf")), "alpha"),
        (lambda: mixup_batch(torch.zeros(3, 1), torch.arange(2), 0.2), "y"),
        (lambda: mixup_batch(torch.zeros(2, 1), torch.zeros(2, 1), 0.2), "y"),
        (
            lambda: mixup_cross_entropy(
                torch.zeros(3, 7), mixup_batch(torch.zeros(2, 1), torch.arange(2), 0.0)
            ),
            "logits",
        ),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()
