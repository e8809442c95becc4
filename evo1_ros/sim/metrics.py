"""Figures of a closed-loop run, without ROS: inference latency, the smoothness of what was commanded,
and success rates with their Wilson 95 % intervals."""

from __future__ import annotations

import math
import time

import numpy as np


class TimedPolicy:
    """A ChunkPolicy that times every `predict_chunk` of the one it wraps: the inference latency."""

    def __init__(self, policy):
        self.policy = policy
        self.chunk_length, self.action_dim, self.num_views = policy.chunk_length, policy.action_dim, policy.num_views
        self.latencies: list[float] = []

    def predict_chunk(self, images, state, instruction):
        start = time.perf_counter()
        chunk = self.policy.predict_chunk(images, state, instruction)
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
