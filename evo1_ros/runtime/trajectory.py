"""Joint trajectory -> servo targets: piecewise-linear interpolation in absolute time. ROS-free.

Points are (time, 6 joints + gripper). Like ros2_control's joint trajectory controller, a new
trajectory replaces the old one; when it starts in the future it starts from where the arm is
commanded now, so a first point far away is approached over its whole time_from_start rather than
in one tick. After the last point the target holds it. Linear is enough: the safety filter bounds
velocity and acceleration. Stale points are dropped by `SafetyFilter.check_trajectory` first.
"""

from __future__ import annotations

import numpy as np


class TrajectoryInterpolator:
    def __init__(self):
        self.times: np.ndarray | None = None  # (n,) absolute seconds, increasing
        self.points: np.ndarray | None = None  # (n, 7)

    def set(self, times: np.ndarray, points: np.ndarray, now: float, current: np.ndarray) -> None:
        """Follow `points` at `times` (times[0] >= now); from `current` (7,) if times[0] > now."""
        if times[0] > now:
            times, points = np.append(now, times), np.vstack([current, points])
        self.times, self.points = np.asarray(times, dtype=float), np.asarray(points, dtype=float)

    def clear(self) -> None:
        self.times = self.points = None

    def sample(self, now: float) -> np.ndarray | None:
        """Target (7,) at `now`, or None when there is no trajectory."""
        if self.times is None:
            return None
        i = int(np.searchsorted(self.times, now, side="right"))
        if i == 0:
            return self.points[0].copy()
        if i == len(self.times):
            return self.points[-1].copy()
        t0, t1 = self.times[i - 1], self.times[i]
        w = (now - t0) / (t1 - t0)
        return (1.0 - w) * self.points[i - 1] + w * self.points[i]
