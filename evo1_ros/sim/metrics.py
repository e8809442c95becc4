"""Figures of a closed-loop run, without ROS: inference latency, the smoothness of what was commanded
(jerk, jumps at chunk seams), and success rates with their Wilson 95 % intervals."""

from __future__ import annotations

import math
import time

import numpy as np

from evo1_ros.runtime.policy import predict


class TimedPolicy:
    """A ChunkPolicy that times every `predict_chunk` of the one it wraps: the inference latency.
    Everything else is the wrapped policy's (attributes are read through, RTC inputs passed on)."""

    def __init__(self, policy):
        self.policy = policy
        self.latencies: list[float] = []

    def __getattr__(self, name):
        if name == "policy":  # not yet set: never recurse into __getattr__
            raise AttributeError(name)
        return getattr(self.policy, name)

    def predict_chunk(self, images, state, instruction, rtc=None):
        start = time.perf_counter()
        chunk = predict(self.policy, images, state, instruction, rtc)
        self.latencies.append(time.perf_counter() - start)
        return chunk


def latency_ms(latencies: list[float]) -> dict:
    """p50/p99/max in ms, leaving out the first chunk (warm-up: allocation, caches), reported alone."""
    steady = np.array(latencies[1:] or latencies) * 1000
    if len(steady) == 0:
        return {"first": None, "p50": None, "p99": None, "max": None}
    return {"first": round(latencies[0] * 1000, 1), "p50": round(float(np.percentile(steady, 50)), 1),
            "p99": round(float(np.percentile(steady, 99)), 1), "max": round(float(steady.max()), 1)}


def commanded_path(windows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The targets the driver was given over time, from the trajectory windows it was sent (each
    (absolute times (n,), joints (n, 6))): every window's points until the next window takes over,
    and the last one's first point. Each window's first point alone would skip a plan step whenever
    a control tick comes late, and third differences turn such a gap into fake jerk."""
    times, positions = [], []
    for i, (t, q) in enumerate(windows):
        end = windows[i + 1][0][0] if i + 1 < len(windows) else t[0] + 1e-9
        keep = t < end
        times.append(t[keep])
        positions.append(q[keep])
    return (np.concatenate(times), np.concatenate(positions)) if windows else (np.empty(0), np.empty((0, 6)))


def largest_seam_jump(windows: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The largest jump (rad, any joint) the commanded targets take where a new plan takes over, from
    the trajectory windows sent (as `commanded_path`): at each window's first point, how far it is
    from where the previous window had the arm at that time (past its last point: that point, which
    the driver holds). Windows of one plan agree there, so only seams count: a plan that replaces
    another with a step, a crossfade's small first step, the stop and restart of a plan that ran
    out. None with fewer than two windows."""
    if len(windows) < 2:
        return None
    jumps = []
    for (t_old, q_old), (t_new, q_new) in zip(windows, windows[1:]):
        was = np.array([np.interp(t_new[0], t_old, q_old[:, j]) for j in range(q_old.shape[1])])
        jumps.append(np.abs(q_new[0] - was).max())
    return float(max(jumps))


def mean_abs_jerk(times: np.ndarray, positions: np.ndarray, dt: float) -> float | None:
    """Mean |d^3 q / dt^3| (rad/s^3, over joints and time) of a joint trajectory, resampled onto a
    uniform dt grid (a new chunk brings a time grid of its own); None if it is too short."""
    if len(times) < 2:
        return None
    grid = np.arange(times[0], times[-1], dt)
    if len(grid) < 4:
        return None
    q = np.stack([np.interp(grid, times, column) for column in np.asarray(positions).T], axis=1)
    return float(np.abs(np.diff(q, n=3, axis=0)).mean() / dt**3)


WILSON_Z = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % by default): unlike the normal
    approximation it stays inside [0, 1] and is honest at 0/n and n/n and for small n."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: int, trials: int) -> dict:
    """A success rate as the eval reports every rate: the count, the rate and its Wilson 95 %."""
    low, high = wilson_interval(successes, trials)
    return {"successes": successes, "episodes": trials, "rate": round(successes / trials, 4),
            "wilson95": [round(low, 4), round(high, 4)]}
