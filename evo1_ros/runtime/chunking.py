"""Asynchronous action chunking: when to ask for a chunk, and how to fold it into the plan.

A policy returns H actions for the observation taken at `obs_time`; action i is the target for
`obs_time + i * dt`. Inference takes time, so when a chunk arrives its first steps already lie in
the past and the previous chunk is still executing. `ChunkScheduler` keeps the plan (targets with
absolute times), asks for the next chunk while enough of the current one is left to cover the
inference latency, and merges each new chunk into the plan in one of three ways:

- `open_loop`: the new chunk replaces the rest of the plan (the reference client's behaviour,
  minus its stop while it waits: with the default threshold 0.5 and H = 50 it executes k = 25).
- `temporal_ensemble`: ACT's running average over every prediction made for a step, weighted
  exp(-m * i) with i = 0 the oldest prediction.
- `crossfade`: linear blend from the old plan to the new chunk across their overlap, so there is
  no step at either end of the seam.

Times are plain float seconds from any clock; this module knows nothing about ROS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("open_loop", "temporal_ensemble", "crossfade")
TIME_EPS = 1e-6  # s; grids built from different float sums still count as meeting at their ends


@dataclass
class Plan:
    times: np.ndarray  # (n,) absolute seconds, increasing
    actions: np.ndarray  # (n, D)
    counts: np.ndarray  # (n,) how many predictions were averaged into each action


def align(chunk: np.ndarray, obs_time: float, now: float, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Times and actions of the steps of `chunk` (predicted at `obs_time`) still ahead of `now`."""
    times = obs_time + dt * np.arange(len(chunk))
    ahead = times > now  # a suffix, since times increase
    return times[ahead], np.asarray(chunk, dtype=float)[ahead]


def _resample(plan: Plan, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plan's actions and counts at `times` (linear in time; callers stay inside the plan)."""
    actions = np.stack([np.interp(times, plan.times, plan.actions[:, d]) for d in range(plan.actions.shape[1])], 1)
    counts = np.rint(np.interp(times, plan.times, plan.counts)).astype(int)
    return actions, counts


def merge(old: Plan | None, times: np.ndarray, actions: np.ndarray, mode: str, decay: float = 0.01) -> Plan:
    """Fold an aligned chunk into the plan. The new chunk's time grid becomes the plan's grid: its
    own predictions stay exact, and the old plan is resampled onto it where the two overlap."""
    counts = np.ones(len(times), dtype=int)
    if old is None or mode == "open_loop" or len(old.times) == 0:
        return Plan(times, actions.copy(), counts)
    overlap = (times >= old.times[0] - TIME_EPS) & (times <= old.times[-1] + TIME_EPS)
    if not overlap.any():
        return Plan(times, actions.copy(), counts)
    prev, prev_counts = _resample(old, times[overlap])
    new = actions[overlap]
    if mode == "temporal_ensemble":
        # Running weighted mean: the c earlier predictions carry sum_{i<c} exp(-m i), the new one exp(-m c).
        weights = np.exp(-decay * np.arange(prev_counts.max() + 1))
        w_old = np.concatenate([[0.0], np.cumsum(weights)])[prev_counts]
        w_new = weights[prev_counts]
        blended = (prev * w_old[:, None] + new * w_new[:, None]) / (w_old + w_new)[:, None]
        counts[overlap] = prev_counts + 1
    elif mode == "crossfade":
        # Weights (j + 1) / (L + 1): the first overlapped step is mostly old, the last mostly new, so
        # neither end of the overlap jumps by more than 1 / (L + 1) of the gap between the chunks.
        alpha = (np.arange(overlap.sum()) + 1.0) / (overlap.sum() + 1.0)
        blended = (1.0 - alpha)[:, None] * prev + alpha[:, None] * new
    else:
        raise ValueError(f"unknown chunk mode {mode!r}; expected one of {MODES}")
    out = actions.copy()
    out[overlap] = blended
    return Plan(times, out, counts)


class ChunkScheduler:
    """The executing plan, stepped by a control loop that calls `window` each tick."""

    def __init__(self, dt: float, chunk_length: int, mode: str = "crossfade", request_threshold: float = 0.5,
                 ensemble_decay: float = 0.01):
        if mode not in MODES:
            raise ValueError(f"unknown chunk mode {mode!r}; expected one of {MODES}")
        if not 0.0 <= request_threshold <= 1.0:
            raise ValueError(f"request_threshold must be in [0, 1], got {request_threshold}")
        if dt <= 0 or chunk_length < 1:
            raise ValueError(f"need dt > 0 and chunk_length >= 1, got {dt}, {chunk_length}")
        self.dt, self.chunk_length, self.mode = dt, chunk_length, mode
        self.request_threshold, self.ensemble_decay = request_threshold, ensemble_decay
        self.plan: Plan | None = None

    def reset(self) -> None:
        self.plan = None

    def remaining(self, now: float) -> int:
        """Planned steps still ahead of `now`."""
        return 0 if self.plan is None else int((self.plan.times > now).sum())

    def should_request(self, now: float) -> bool:
        """True once the unexecuted remainder is at most `request_threshold` of a chunk."""
        return self.remaining(now) <= self.request_threshold * self.chunk_length

    def add_chunk(self, chunk: np.ndarray, obs_time: float, now: float) -> int:
        """Merge a chunk predicted for the observation at `obs_time`; returns how many of its steps
        were still ahead of `now` (0: it arrived too late and the plan is unchanged)."""
        times, actions = align(chunk, obs_time, now, self.dt)
        if len(times) == 0:
            return 0
        self._prune(now)
        self.plan = merge(self.plan, times, actions, self.mode, self.ensemble_decay)
        return len(times)

    def window(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Upcoming (times, actions), the targets to publish this tick; empty when the plan ran out."""
        self._prune(now)
        if self.plan is None:
            return np.empty(0), np.empty((0, 0))
        ahead = self.plan.times > now
        return self.plan.times[ahead], self.plan.actions[ahead]

    def _prune(self, now: float) -> None:
        # Keep the last step at or before `now` as well: the next chunk's overlap is interpolated
        # between it and the first step ahead.
        if self.plan is None:
            return
        first = max(int(np.searchsorted(self.plan.times, now, side="right")) - 1, 0)
        p = self.plan
        self.plan = Plan(p.times[first:], p.actions[first:], p.counts[first:])
