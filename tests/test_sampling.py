"""KnownAnomalyDraws: which known anomalies join each training step, in both stages."""

from __future__ import annotations

import pytest
import torch

from anomem.sampling import KnownAnomalyDraws


def test_replacement_draws_exactly_what_randint_draws():
    """The default keeps the draws of the code before the param existed, so the committed grid is unchanged."""
    draws = KnownAnomalyDraws(15, 10, "replacement", torch.Generator().manual_seed(4))
    reference = torch.Generator().manual_seed(4)
    for _ in range(3):
        assert torch.equal(draws.next(), torch.randint(0, 15, (10,), generator=reference))


def test_epoch_draws_each_anomaly_once_before_any_repeats():
    draws = KnownAnomalyDraws(7, 3, "epoch", torch.Generator().manual_seed(0))
    picks = torch.cat([draws.next() for _ in range(7)])  # 21 draws: three full passes over 7
    for start in range(0, 21, 7):
        assert sorted(picks[start : start + 7].tolist()) == list(range(7))
    assert all(draws.next().numel() == 3 for _ in range(5))


def test_per_step_is_capped_at_the_number_known():
    for mode in ("replacement", "epoch"):
        assert KnownAnomalyDraws(4, 32, mode, torch.Generator()).next().numel() == 4


def test_state_round_trip_continues_the_same_sequence():
    gen = torch.Generator().manual_seed(1)
    draws = KnownAnomalyDraws(9, 4, "epoch", gen)
    draws.next()
    state, gen_state = draws.state_dict(), gen.get_state()
    expected = [draws.next() for _ in range(4)]
    gen2 = torch.Generator()
    gen2.set_state(gen_state)
    resumed = KnownAnomalyDraws(9, 4, "epoch", gen2)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next()) for a in expected)


def test_no_known_anomalies_is_refused():
    with pytest.raises(ValueError, match="at least one known anomaly"):
        KnownAnomalyDraws(0, 4, "epoch", torch.Generator())
