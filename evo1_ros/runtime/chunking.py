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
- `rtc`: real-time chunking (runtime.rtc): a chunk is asked for every `execution_horizon` executed
  actions, and sampled knowing the plan it will replace (`rtc_inputs`): its first d steps, those
  that execute before it lands, are pulled onto the plan and the rest inpainted toward it. d is a
  high percentile of the recent observation-to-merge delays, in steps. The merged plan keeps those
  d committed steps and takes the new chunk after them.

Times are plain float seconds from any clock; this module knows nothing about ROS.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

MODES = ("open_loop", "temporal_ensemble", "crossfade", "rtc")
RTC_SCHEDULES = ("LINEAR", "EXP", "ONES", "ZEROS")  # how the prefix weights decay (runtime.rtc)
TIME_EPS = 1e-6  # s; grids built from different float sums still count as meeting at their ends


@dataclass(frozen=True)
class RTCConfig:
    """How `rtc` mode executes chunks. The defaults follow the paper and LeRobot's Evo-1 rollout
    (execution horizon ~10, max guidance weight 10, exponential decay)."""

    execution_horizon: int = 8  # s: actions executed from each chunk before the next is asked for
    max_guidance_weight: float = 10.0  # beta: the clip on the guidance weight; 0 = no guidance
    schedule: str = "EXP"  # how W decays between the committed steps and H - s: one of RTC_SCHEDULES
    delay_percentile: float = 95.0  # d covers this percentile of the recent delays...
    delay_window: int = 20  # ...over this many chunks

    def __post_init__(self):
        if not isinstance(self.execution_horizon, (int, np.integer)) or self.execution_horizon < 1:
            raise ValueError(f"execution_horizon must be a whole number of actions >= 1, "
                             f"got {self.execution_horizon!r}")
        if not math.isfinite(self.max_guidance_weight) or self.max_guidance_weight < 0:
            raise ValueError(f"max_guidance_weight must be finite and >= 0, got {self.max_guidance_weight}")
        if self.schedule not in RTC_SCHEDULES:
            raise ValueError(f"unknown RTC schedule {self.schedule!r}; expected one of {RTC_SCHEDULES}")
        if not 0.0 < self.delay_percentile <= 100.0:
            raise ValueError(f"delay_percentile must be in (0, 100], got {self.delay_percentile}")
        if self.delay_window < 1:
            raise ValueError(f"delay_window must be >= 1, got {self.delay_window}")


@dataclass(frozen=True)
class RTCInputs:
    """What an `rtc` request hands the policy besides the observation (ChunkPolicy.predict_chunk)."""

    prefix: np.ndarray  # (n, D) the plan's actions at the new chunk's steps 0..n-1, robot units
    delay: int  # d: the new chunk's steps that execute before it lands (committed)
    config: RTCConfig


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


def merge(old: Plan | None, times: np.ndarray, actions: np.ndarray, mode: str, decay: float = 0.01,
          committed: int = 0) -> Plan:
    """Fold an aligned chunk into the plan. The new chunk's time grid becomes the plan's grid: its
    own predictions stay exact, and the old plan is resampled onto it where the two overlap.
    `committed` (rtc): how many of the aligned chunk's first steps keep the old plan's actions."""
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
    elif mode == "rtc":
        # The committed steps were being executed from the old plan while the chunk was sampled
        # (and the chunk was pulled onto them): they stay; the new chunk takes over after them.
        keep = np.flatnonzero(overlap) < committed
        blended = np.where(keep[:, None], prev, new)
    else:
        raise ValueError(f"unknown chunk mode {mode!r}; expected one of {MODES}")
    out = actions.copy()
    out[overlap] = blended
    return Plan(times, out, counts)


class ChunkScheduler:
    """The executing plan, stepped by a control loop that calls `window` each tick."""

    def __init__(self, dt: float, chunk_length: int, mode: str = "crossfade", request_threshold: float = 0.5,
                 ensemble_decay: float = 0.01, rtc: RTCConfig | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown chunk mode {mode!r}; expected one of {MODES}")
        if not 0.0 <= request_threshold <= 1.0:
            raise ValueError(f"request_threshold must be in [0, 1], got {request_threshold}")
        if dt <= 0 or chunk_length < 1:
            raise ValueError(f"need dt > 0 and chunk_length >= 1, got {dt}, {chunk_length}")
        self.dt, self.chunk_length, self.mode = dt, chunk_length, mode
        self.rtc = RTCConfig() if rtc is None else rtc
        if mode == "rtc":
            self.check_rtc(self.rtc)
        self.request_threshold, self.ensemble_decay = request_threshold, ensemble_decay
        self.plan: Plan | None = None
        self._origin = -math.inf  # obs_time of the chunk merged last: rtc asks again s steps after it
        self._request: tuple[float, int] | None = None  # (obs_time, d) of the rtc request out
        # Observation-to-merge delays (s). The first chunk's is kept apart: it carries the warm-up
        # (allocation, graph capture) and would hold the percentile up for a whole window.
        self._first_delay: float | None = None
        self._delays: deque[float] = deque(maxlen=self.rtc.delay_window)

    def check_rtc(self, config: RTCConfig) -> None:
        """ValueError with the reason where `config` cannot work with this chunk length."""
        if config.execution_horizon > self.chunk_length:
            raise ValueError(f"execution_horizon {config.execution_horizon} is longer than the chunk "
                             f"({self.chunk_length} actions): it must be at most the chunk length")

    def set_rtc(self, config: RTCConfig) -> None:
        """Execute with `config` from the next request on (a setting changed at run time), all of it
        at once; ValueError with the reason where it cannot work with this chunk length. The delays
        measured so far stay."""
        self.check_rtc(config)
        if config.delay_window != self._delays.maxlen:
            self._delays = deque(self._delays, maxlen=config.delay_window)
        self.rtc = config

    def reset(self) -> None:
        """Drop the plan (pause): the delays measured so far stay, they describe the machine."""
        self.plan, self._origin, self._request = None, -math.inf, None

    def remaining(self, now: float) -> int:
        """Planned steps still ahead of `now`."""
        return 0 if self.plan is None else int((self.plan.times > now).sum())

    def should_request(self, now: float) -> bool:
        """True once the unexecuted remainder is at most `request_threshold` of a chunk; in rtc
        mode, once `execution_horizon` steps of the newest chunk have passed (or the plan ran out)."""
        if self.mode == "rtc":
            due = now >= self._origin + self.rtc.execution_horizon * self.dt - TIME_EPS
            return due or self.remaining(now) == 0
        return self.remaining(now) <= self.request_threshold * self.chunk_length

    def delay(self) -> float | None:
        """The delay (s) d covers: the configured percentile of the recent observation-to-merge
        delays (the first chunk's alone until there are others); None before any chunk."""
        if not self._delays:
            return self._first_delay
        return float(np.percentile(np.asarray(self._delays), self.rtc.delay_percentile))

    def delay_steps(self) -> int:
        """d: how many of a new chunk's steps are due by the time it lands, at `delay()`."""
        delay = self.delay()
        return 0 if delay is None else min(math.floor(delay / self.dt + TIME_EPS) + 1, self.chunk_length)

    def rtc_inputs(self, obs_time: float) -> RTCInputs | None:
        """For a chunk about to be asked for the observation at `obs_time`: the plan's actions at
        its steps 0, 1, ... (as far as the plan reaches) and d, the steps of it committed before
        it lands; None outside rtc mode or with nothing planned (the chunk is sampled plainly).
        Remembers d for that chunk's `add_chunk`."""
        self._request = None
        if self.mode != "rtc" or self.plan is None or len(self.plan.times) == 0:
            return None
        steps = obs_time + self.dt * np.arange(self.chunk_length)
        steps = steps[steps <= self.plan.times[-1] + TIME_EPS]
        if len(steps) == 0:
            return None
        # Steps before the plan's oldest kept one (an observation older than a tick) hold its value.
        prefix, _ = _resample(self.plan, steps)
        self._request = (obs_time, self.delay_steps())
        return RTCInputs(prefix, self._request[1], self.rtc)

    def add_chunk(self, chunk: np.ndarray, obs_time: float, now: float) -> int:
        """Merge a chunk predicted for the observation at `obs_time`; returns how many of its steps
        were still ahead of `now` (0: it arrived too late and the plan is unchanged)."""
        self._record_delay(now - obs_time)
        times, actions = align(chunk, obs_time, now, self.dt)
        committed = 0
        if self._request is not None and self._request[0] == obs_time:
            committed = max(self._request[1] - (len(chunk) - len(times)), 0)  # in aligned steps
        self._request = None
        if len(times) == 0:
            return 0
        self._prune(now)
        self.plan = merge(self.plan, times, actions, self.mode, self.ensemble_decay, committed)
        self._origin = obs_time
        return len(times)

    def window(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Upcoming (times, actions), the targets to publish this tick; empty when the plan ran out."""
        self._prune(now)
        if self.plan is None:
            return np.empty(0), np.empty((0, 0))
        ahead = self.plan.times > now
        return self.plan.times[ahead], self.plan.actions[ahead]

    def _record_delay(self, delay: float) -> None:
        if self._first_delay is None:
            self._first_delay = max(delay, 0.0)
        else:
            self._delays.append(max(delay, 0.0))

    def _prune(self, now: float) -> None:
        # Keep the last step at or before `now` as well: the next chunk's overlap is interpolated
        # between it and the first step ahead.
        if self.plan is None:
            return
        first = max(int(np.searchsorted(self.plan.times, now, side="right")) - 1, 0)
        p = self.plan
        self.plan = Plan(p.times[first:], p.actions[first:], p.counts[first:])
