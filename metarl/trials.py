"""Trials: K episodes of the same task seen as one episode, with RL²'s inputs.

RL² (Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement
Learning"; Wang et al. 2016, "Learning to reinforcement learn") meta-learns
with a recurrent policy whose memory persists across the episodes of a
trial, so exploration in early episodes can pay off in later ones.
:class:`TrialEnv` turns any batched env into that setting:

* the observation becomes ``[obs, previous action, previous reward, previous
  episode-end flag]`` (the action one-hot for discrete spaces, clipped to
  the box for continuous ones, as the env applied it), all three
  zero at the start of a trial, optionally followed by the steps taken in
  the trial over a fixed ``time_horizon`` (with a fixed horizon the value of
  a state depends on the steps left, which a recurrent net otherwise has to
  count: Pardo et al. 2018, "Time Limits in Reinforcement Learning");
* a trial is ``episodes_per_trial`` episodes of the same task (autoreset
  keeps the task); its end is reported as ``terminated`` (nothing after it
  counts), and ``reset_memory`` is set only there, so the rollout engine
  carries the hidden state across episode boundaries and resets it between trials;
* ``episode_return`` / ``episode_length`` report whole trials;
  :attr:`TrialEnv.episode_index` says which episode of its trial each env is in.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from metarl.env import StepOutput, TensorEnv, TensorEnvView
from metarl.validation import check_positive_int


def trial_observation(
    obs: torch.Tensor,
    action_features: torch.Tensor,
    reward: torch.Tensor,
    ended: torch.Tensor,
    elapsed: torch.Tensor | None = None,
) -> torch.Tensor:
    """RL²'s input ``[obs, previous action features, previous reward, previous episode-end flag(, elapsed)]``, batched.

    ``elapsed``: the steps already taken in the trial over the time horizon,
    for policies trained with one (see :class:`TrialEnv`). The one place that fixes the
    layout; :class:`TrialEnv` builds every observation with it, and so can
    code that feeds a trained RL² policy by hand.
    """
    parts = [obs, action_features, reward.unsqueeze(-1), ended.to(obs.dtype).unsqueeze(-1)]
    if elapsed is not None:
        parts.append(elapsed.to(obs.dtype).unsqueeze(-1))
    return torch.cat(parts, dim=-1)


def action_features(action: torch.Tensor, num_actions: int | None) -> torch.Tensor:
    """How a previous action enters RL²'s input: one-hot over ``num_actions`` for discrete actions, else as floats."""
    if num_actions is None:
        return action.float()
    return (action.unsqueeze(-1) == torch.arange(num_actions, device=action.device)).float()


class TrialEnv(TensorEnvView):
    """``env`` with trials of ``episodes_per_trial`` episodes and RL²'s augmented observations.

    ``time_horizon``: if given, append the steps taken in the trial divided by
    it to every observation. Pass the training trial's length, so that the
    feature runs from 0 to 1 over a training trial and a step means the same
    in longer evaluation trials (where it goes past 1).
    """

    def __init__(self, env: TensorEnv, episodes_per_trial: int, time_horizon: int | None = None) -> None:
        check_positive_int("episodes_per_trial", episodes_per_trial)
        if time_horizon is not None:
            check_positive_int("time_horizon", time_horizon)
            if env.family.max_episode_steps is None:
                raise ValueError(f"a time_horizon needs a family with an episode limit; {env.family!r} declares none")
        base = env.single_observation_space
        if not isinstance(base, spaces.Box) or len(base.shape) != 1:
            raise TypeError(f"TrialEnv needs a flat Box observation space, got {base}")
        self.env = env
        self.episodes_per_trial = episodes_per_trial
        self.time_horizon = time_horizon
        self.num_envs = env.num_envs
        self.device = env.device
        self.single_action_space = env.single_action_space
        action_space = env.single_action_space
        if isinstance(action_space, spaces.Discrete):
            self._num_actions: int | None = int(action_space.n)
            action_low, action_high = np.zeros(self._num_actions), np.ones(self._num_actions)
        else:
            self._num_actions = None
            action_low, action_high = action_space.low, action_space.high
            self._action_low = torch.as_tensor(action_low, dtype=torch.float32, device=self.device)
            self._action_high = torch.as_tensor(action_high, dtype=torch.float32, device=self.device)
        self._ended_column = base.shape[0] + len(action_low) + 1  # [obs, action features, reward, ended(, elapsed)]
        low = [base.low, action_low, [-np.inf], [0.0]]
        high = [base.high, action_high, [np.inf], [1.0]]
        if time_horizon is not None:
            low.append([0.0])
            high.append([self.max_trial_steps / time_horizon])
        self.single_observation_space = spaces.Box(
            np.concatenate(low).astype(np.float32), np.concatenate(high).astype(np.float32), dtype=np.float32
        )
        self.episode_index = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._trial_return = torch.zeros(self.num_envs, device=self.device)
        self._trial_length = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)

    @property
    def max_trial_steps(self) -> int | None:
        """Steps of the longest possible trial (``None`` if the family has no episode limit)."""
        limit = self.env.family.max_episode_steps
        return None if limit is None else limit * self.episodes_per_trial

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start a new trial in every env (same tasks)."""
        obs = self.env.reset(seed=seed)
        self.episode_index = torch.zeros_like(self.episode_index)
        self._trial_return = torch.zeros_like(self._trial_return)
        self._trial_length = torch.zeros_like(self._trial_length)
        width = self._num_actions or int(np.prod(self.single_action_space.shape))
        no_action = torch.zeros(self.num_envs, width, device=self.device)
        zero = torch.zeros_like(self._trial_return)
        return trial_observation(obs, no_action, zero, zero.bool(), self.elapsed(self._trial_length))

    def episode_ended(self, final_obs: torch.Tensor) -> torch.Tensor:
        """Whether each step ended an episode of its trial, read from the steps' ``final_obs`` ``(..., obs_dim)``
        (their ``obs`` clears the flag when a new trial begins). ``done`` marks only a trial's end."""
        return final_obs[..., self._ended_column] > 0.5

    def elapsed(self, steps: torch.Tensor) -> torch.Tensor | None:
        """The time feature for ``steps`` taken in the trial (None without a time horizon)."""
        return None if self.time_horizon is None else steps.float() / self.time_horizon

    def step(self, action: torch.Tensor) -> StepOutput:
        out = self.env.step(action)
        ended = out.done
        index = self.episode_index + ended.long()
        trial_end = ended & (index >= self.episodes_per_trial)
        self.episode_index = torch.where(trial_end, 0, index)
        trial_return = self._trial_return + out.reward
        trial_length = self._trial_length + 1
        running = ~trial_end
        self._trial_return = trial_return * running
        self._trial_length = trial_length * running
        action = torch.as_tensor(action, device=self.device)
        if self._num_actions is None:  # the action the env applied: it clips Box actions to the box
            action = torch.clamp(action, self._action_low, self._action_high)
        features = action_features(action, self._num_actions)
        # The first observation of a new trial carries no previous action, reward or flag.
        keep = running.float().unsqueeze(-1)
        next_obs = trial_observation(
            out.obs, features * keep, out.reward * running, ended & running, self.elapsed(self._trial_length)
        )
        final_obs = trial_observation(out.final_obs, features, out.reward, ended, self.elapsed(trial_length))
        return StepOutput(
            obs=next_obs,
            reward=out.reward,
            terminated=trial_end,
            truncated=torch.zeros_like(trial_end),
            final_obs=final_obs,
            episode_return=trial_return * trial_end,
            episode_length=trial_length * trial_end,
            reset_memory=trial_end,
        )

    def __repr__(self) -> str:
        time = "" if self.time_horizon is None else f", time_horizon={self.time_horizon}"
        return f"TrialEnv({self.env!r}, episodes_per_trial={self.episodes_per_trial}{time})"
