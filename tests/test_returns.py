"""GAE and returns against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from metarl.returns import discounted_returns, gae, next_values, normalize


def test_gae_by_hand_with_termination_and_truncation() -> None:
    # One env, four steps: terminated after step 1, truncated after step 3 (final value 10).
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    values = torch.tensor([[0.5], [1.0], [1.5], [2.0]])
    terminated = torch.tensor([[False], [True], [False], [False]])
    truncated = torch.tensor([[False], [False], [False], [True]])
    final_values = torch.tensor([[99.0], [99.0], [99.0], [10.0]])  # read only where truncated
    nv = next_values(values, torch.tensor([7.0]), terminated, truncated, final_values)
    assert nv.squeeze(1).tolist() == [1.0, 0.0, 2.0, 10.0]
    adv, ret = gae(rewards, values, nv, terminated | truncated, gamma=0.9, lam=0.5)
    # deltas: 1 + .9*1 - .5 = 1.4;  2 + 0 - 1 = 1.0;  3 + .9*2 - 1.5 = 3.3;  4 + .9*10 - 2 = 11.0
    # A3 = 11.0;  A2 = 3.3 + .45*11 = 8.25;  A1 = 1.0 (episode ended);  A0 = 1.4 + .45*1.0 = 1.85
    torch.testing.assert_close(adv.squeeze(1), torch.tensor([1.85, 1.0, 8.25, 11.0]))
    torch.testing.assert_close(ret.squeeze(1), torch.tensor([2.35, 2.0, 9.75, 13.0]))


def test_gae_bootstraps_the_rollout_end_with_last_value() -> None:
    rewards = torch.ones(3, 2)
    values = torch.zeros(3, 2)
    no = torch.zeros(3, 2, dtype=torch.bool)
    nv = next_values(values, torch.tensor([0.0, 4.0]), no, no)
    adv, _ = gae(rewards, values, nv, no, gamma=0.5, lam=1.0)
    # env 0: 1 + .5 + .25 = 1.75;  env 1: 1.75 + .125 * 4 = 2.25
    torch.testing.assert_close(adv[0], torch.tensor([1.75, 2.25]))


def test_discounted_returns_restart_at_episode_ends() -> None:
    rewards = torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    terminated = torch.tensor([[False], [True], [False], [False]])
    truncated = torch.zeros_like(terminated)
    g = discounted_returns(rewards, terminated, truncated, gamma=0.5)
    torch.testing.assert_close(g.squeeze(1), torch.tensor([1.5, 1.0, 1.5, 1.0]))
    # A truncated ending is bootstrapped from its final value; a terminated one never is.
    truncated = torch.tensor([[False], [True], [False], [False]])
    g = discounted_returns(rewards, torch.zeros_like(truncated), truncated, 0.5, final_values=torch.full((4, 1), 2.0))
    torch.testing.assert_close(g.squeeze(1), torch.tensor([2.0, 2.0, 1.5, 1.0]))


def test_gae_rejects_bad_discounts() -> None:
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="gamma=1.5"):
        gae(x, x, x, x.bool(), gamma=1.5, lam=0.9)


def test_normalize() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert abs(float(normalize(x).mean())) < 1e-6
    torch.testing.assert_close(normalize(x, dim=0).std(dim=0), torch.ones(2), atol=1e-4, rtol=0)
