"""The learning-rate schedule every trainer shares: linear decay to 0, after an optional linear warm-up."""

from __future__ import annotations

import pytest

from params import load_params
from params.model import ParamsError
from models.fit import epoch_batches, learning_rate


def _tp(**train):
    return load_params(None, [f"train.{k}={v}" for k, v in train.items()]).train


def test_without_warmup_the_rate_decays_from_the_first_step_as_before():
    tp = _tp(learning_rate=0.5, warmup_fraction=0.0)
    total = 40
    assert [learning_rate(tp, s, total) for s in range(total)] == [
        0.5 * max(0.0, 1.0 - s / total) for s in range(total)
    ]


def test_warmup_rises_to_the_rate_then_decays_to_zero():
    tp = _tp(learning_rate=1e-4, warmup_fraction=0.1)
    total = 100
    rates = [learning_rate(tp, s, total) for s in range(total)]
    assert rates[0] == pytest.approx(1e-5) and rates[9] == pytest.approx(1e-4) == max(rates)
    assert all(a < b for a, b in zip(rates[:10], rates[1:10], strict=False))
    assert all(a > b for a, b in zip(rates[10:], rates[11:], strict=False)) and 0 < rates[-1] < 2e-6


def test_epoch_batches_follow_the_schedule_across_epochs():
    tp = _tp(learning_rate=0.2, warmup_fraction=0.25, epochs=2, batch_size=10)
    seen = [lr for epoch in (1, 2) for _, lr in epoch_batches(tp, 40, epoch)]
    assert seen == [learning_rate(tp, s, 8) for s in range(8)] and seen[1] == pytest.approx(0.2)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_a_warmup_fraction_outside_0_to_1_is_refused_by_name(value):
    with pytest.raises(ParamsError, match="train.warmup_fraction"):
        load_params(None, [f"train.warmup_fraction={value}"])
