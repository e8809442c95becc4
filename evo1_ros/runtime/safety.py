"""The safety filter between trajectories and the arm. ROS-free.

Every servo target the driver sends comes out of `SafetyFilter.step`, and every trajectory the
driver follows has passed `SafetyFilter.check_trajectory`. The guarantees, per servo tick dt:

- joint positions stay inside the xArm6 limits shrunk by `joint_limit_margin`;
- |velocity| <= max_velocity and |acceleration| <= max_acceleration, including while stopping
  (the filter brakes early enough to reach a limit or a target with zero velocity);
- a non-finite target is never followed: the arm decelerates and holds;
- the gripper stays in [0, 0.85] and moves at most `gripper_max_velocity`;
- no fresh trajectory for `watchdog_s`, or a latched emergency stop: decelerate and hold.
  The emergency stop latches until `reset()`; trajectories that arrive meanwhile are refused;
- first motion: when the filter starts following after start-up, an e-stop reset, recover,
  leaving teaching mode, or a hold of at least HOLD_BEFORE_FIRST_MOTION_S (the watchdog holding
  the arm while the policy was paused or stalled), toward a target farther than
  `first_motion_tolerance` from where the arm stands, joints move at most
  `first_motion_scale * max_velocity` until every joint is within that tolerance of its target, so
  a first target far from the arm is approached slowly. A short hold at a chunk seam, or a first
  target where the arm stands, is a continuation, followed at full speed: slowing it would leave
  the arm behind a target it could never catch up with.

`limits` may be replaced between ticks (a new `SafetyLimits`, whole): `step` reads it once per tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evo1_ros.robot import xarm6

NUM_AXES = xarm6.NUM_JOINTS + 1  # 6 joints + gripper drive
# A hold this long or longer (s) is a pause, not a chunk seam: the next motion may be a first motion.
HOLD_BEFORE_FIRST_MOTION_S = 1.0


class TrajectoryRejected(ValueError):
    """A trajectory the filter will not follow; the text says why."""


@dataclass(frozen=True)
class SafetyLimits:
    joint_limit_margin: float = 0.05  # rad kept clear of every URDF joint limit
    max_velocity: float = xarm6.MOVEIT_MAX_VELOCITY  # rad/s, every joint
    max_acceleration: float = xarm6.MOVEIT_MAX_ACCELERATION  # rad/s^2, every joint
    gripper_max_velocity: float = 1.7  # drive units/s: a full stroke (0.85) in 0.5 s
    watchdog_s: float = 0.1  # no fresh trajectory for this long -> stop
    first_motion_scale: float = 0.25  # fraction of max_velocity for the first motion after holding
    first_motion_tolerance: float = 0.02  # rad: the first motion ends once every joint is this close

    def __post_init__(self):
        widest_margin = 0.5 * float(np.min(xarm6.JOINT_UPPER - xarm6.JOINT_LOWER))
        if not 0.0 <= self.joint_limit_margin < widest_margin:
            raise ValueError(f"joint_limit_margin must be in [0, {widest_margin:.3f}) rad")
        if not 0.0 < self.max_velocity <= xarm6.URDF_MAX_VELOCITY:
            raise ValueError(f"max_velocity must be in (0, {xarm6.URDF_MAX_VELOCITY}] rad/s")
        if not self.max_acceleration > 0.0:
            raise ValueError("max_acceleration must be > 0")
        if not self.gripper_max_velocity > 0.0:
            raise ValueError("gripper_max_velocity must be > 0")
        if not self.watchdog_s > 0.0:
            raise ValueError("watchdog_s must be > 0")
        if not 0.0 < self.first_motion_scale <= 1.0:
            raise ValueError("first_motion_scale must be in (0, 1] (a fraction of max_velocity)")
        if not self.first_motion_tolerance > 0.0:
            raise ValueError("first_motion_tolerance must be > 0 rad")

    @property
    def lower(self) -> np.ndarray:
        return xarm6.JOINT_LOWER + self.joint_limit_margin

    @property
    def upper(self) -> np.ndarray:
        return xarm6.JOINT_UPPER - self.joint_limit_margin


def braking_velocity(distance: np.ndarray, max_acceleration: float, dt: float) -> np.ndarray:
    """Highest speed from which the arm can still stop within `distance`, decelerating by at most
    max_acceleration * dt per tick and moving speed * dt per tick (both exact, not continuous).

    From speed v the shortest stop covers dt * sum_k max(v - k*a*dt, 0). That sum is a*dt^2 *
    n(n+1)/2 at v = n*a*dt and linear between, so invert it piecewise. Following this curve
    lands on the target exactly, which is what keeps the limits and the accel bound compatible.
    """
    step = max_acceleration * dt * dt
    units = np.maximum(distance, 0.0) / step
    n = np.floor((np.sqrt(1.0 + 8.0 * units) - 1.0) / 2.0)
    return max_acceleration * dt * (units + n * (n + 1) / 2) / (n + 1)


class SafetyFilter:
    """Turns desired targets into servo commands that respect `SafetyLimits`, one tick at a time."""

    def __init__(self, limits: SafetyLimits, dt: float):
        self.limits = limits
        self.dt = dt
        self.positions = np.zeros(xarm6.NUM_JOINTS)  # last command
        self.velocities = np.zeros(xarm6.NUM_JOINTS)
        self.gripper = 0.0
        self.estopped = False
        self._last_trajectory_time = -math.inf
        self.stopping_reason = "no trajectory yet"  # "" while following a trajectory
        self.first_motion = False  # moving under the first-motion speed limit
        self._first_target_due = False  # the next target followed decides whether a first motion starts
        self._held_since = math.inf  # when the filter began holding the arm; inf while following

    def sync(self, positions: np.ndarray, gripper: float) -> None:
        """Start from the measured state at rest (after connect or recover): slowly, a first motion."""
        self.positions = np.asarray(positions, dtype=float).copy()
        self.velocities = np.zeros(xarm6.NUM_JOINTS)
        self.gripper = float(np.clip(gripper, xarm6.GRIPPER_OPEN, xarm6.GRIPPER_CLOSED))
        self.first_motion, self._first_target_due = False, True

    def come_to_rest(self) -> None:
        """The arm stood still at the last command (a tick stalled in the backend): go on from rest."""
        self.velocities = np.zeros(xarm6.NUM_JOINTS)

    def emergency_stop(self) -> None:
        self.estopped = True

    def reset(self) -> None:
        """Release the emergency stop; the arm stays still until a trajectory arrives after this."""
        self.estopped = False
        self._last_trajectory_time = -math.inf
        self._first_target_due = True

    def check_trajectory(self, times: np.ndarray, points: np.ndarray, now: float):
        """Validate a trajectory (times (n,) absolute seconds, points (n, 7)) and drop its stale
        points: those before `now` give way to one point at `now` on the segment that spans it,
        as a trajectory controller samples it. Returns (times, points) with times[0] >= now;
        raises TrajectoryRejected. Changes nothing: safe to call from any thread."""
        if self.estopped:
            raise TrajectoryRejected("emergency stop is latched; call reset first")
        times = np.asarray(times, dtype=float)
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape != (len(times), NUM_AXES) or len(times) == 0:
            raise TrajectoryRejected(f"expected n >= 1 points of {NUM_AXES} values, got {points.shape}")
        if not (np.isfinite(times).all() and np.isfinite(points).all()):
            raise TrajectoryRejected("trajectory contains NaN or inf")
        if (np.diff(times) <= 0).any():
            raise TrajectoryRejected("time_from_start is not strictly increasing")
        if times[-1] <= now:
            raise TrajectoryRejected(f"all {len(times)} points are stale (last {now - times[-1]:.3f} s ago)")
        first_ahead = int(np.searchsorted(times, now, side="right"))
        if first_ahead == 0:
            return times, points
        t0, t1 = times[first_ahead - 1], times[first_ahead]
        w = (now - t0) / (t1 - t0)
        at_now = (1.0 - w) * points[first_ahead - 1] + w * points[first_ahead]
        return np.append(now, times[first_ahead:]), np.vstack([at_now, points[first_ahead:]])

    def feed_watchdog(self, arrival: float) -> None:
        """A checked trajectory arrived at `arrival` and is being followed."""
        self._last_trajectory_time = arrival

    def watchdog_expired(self, now: float) -> bool:
        return now - self._last_trajectory_time > self.limits.watchdog_s

    def step(self, target: np.ndarray | None, now: float) -> tuple[np.ndarray, float]:
        """Next servo command (6 joint angles, gripper drive) toward `target` (7,) or, when there
        is no target, it is not finite, the watchdog expired or the e-stop is latched, toward rest."""
        lim = self.limits
        holding = bool(self.stopping_reason)
        if not holding:
            self._held_since = math.inf
        if self.estopped:
            self.stopping_reason = "emergency stop"
        elif self.watchdog_expired(now):
            self.stopping_reason = f"no fresh trajectory for {lim.watchdog_s * 1e3:.0f} ms"
        elif target is None:
            self.stopping_reason = "no trajectory"
        elif not np.isfinite(target).all():
            self.stopping_reason = "non-finite target"
        else:
            self.stopping_reason = ""
        q, v, dt = self.positions, self.velocities, self.dt
        if self.stopping_reason:
            self._held_since = min(self._held_since, now)
            desired_velocity = np.zeros_like(v)
            gripper_target = self.gripper
        else:
            joint_target = np.clip(target[: xarm6.NUM_JOINTS], lim.lower, lim.upper)
            error = joint_target - q
            if self._first_target_due or (holding and now - self._held_since >= HOLD_BEFORE_FIRST_MOTION_S):
                self.first_motion = np.abs(error).max() > lim.first_motion_tolerance  # far: approached slowly
            self._first_target_due = False
            max_velocity = lim.max_velocity * (lim.first_motion_scale if self.first_motion else 1.0)
            speed = np.minimum(max_velocity, braking_velocity(np.abs(error), lim.max_acceleration, dt))
            desired_velocity = np.sign(error) * speed
            gripper_target = float(np.clip(target[-1], xarm6.GRIPPER_OPEN, xarm6.GRIPPER_CLOSED))
        # Acceleration bound, then whatever still lets us stop before each joint limit. The two
        # ranges always overlap: last tick's speed obeyed the braking curve, and one tick of full
        # deceleration keeps it on that curve.
        dv = lim.max_acceleration * dt
        low = np.maximum(v - dv, -braking_velocity(q - lim.lower, lim.max_acceleration, dt))
        high = np.minimum(v + dv, braking_velocity(lim.upper - q, lim.max_acceleration, dt))
        self.velocities = np.clip(desired_velocity, low, high)
        # The clip only absorbs float rounding (the braking curve already keeps q inside) and never
        # pulls a joint that starts outside the margin inward faster than the bounds allow.
        self.positions = np.clip(q + self.velocities * dt, np.minimum(lim.lower, q), np.maximum(lim.upper, q))
        if self.first_motion and not self.stopping_reason and (
                np.abs(joint_target - self.positions).max() <= lim.first_motion_tolerance):
            self.first_motion = False  # arrived: full speed from the next tick
        max_gripper_step = lim.gripper_max_velocity * dt
        self.gripper += float(np.clip(gripper_target - self.gripper, -max_gripper_step, max_gripper_step))
        return self.positions.copy(), self.gripper
