"""`SimBackend`: the driver's `sim` backend — a MuJoCo xArm6 that steps in (scaled) real time.

The physics runs on its own thread, so the arm keeps moving between servo commands like the real
one does, and the world it steps is the process-wide `shared_world()` unless one is given: the
sim camera node in the same process renders that very world.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from evo1_ros.robot.backend import DriverBackend, RobotState, VelocityEstimate
from evo1_ros.sim.lockstep import LockstepWorld
from evo1_ros.sim.world import SimWorld, shared_world

TICK_S = 0.005  # wall seconds between physics catch-ups
MAX_LAG_S = 0.05  # sim time never catches up more than this per tick: a stall slows the sim down


class SimBackend(DriverBackend):
    name = "sim"

    def __init__(self, world: SimWorld | None = None, speed: float = 1.0):
        """speed: sim seconds per wall second (1 = real time)."""
        self.world = world or shared_world()
        self.speed = speed
        # On a lockstep world (sim time) physics also waits for the servo loop: it runs at most one
        # servo period past the last command, so every period of sim time gets exactly one command
        # however fast the CPU is, and a stalled loop stalls physics with it (the arm goes on moving
        # when the loop does, instead of standing at the last command).
        self.lockstep = isinstance(self.world, LockstepWorld)
        self.stalls_stop_the_arm = not self.lockstep
        self._period_ns = 0  # servo period; 0 until a servo loop says (physics then waits for no one)
        self._commanded_ns = -1  # the lockstep world's time at the last command; -1: none yet
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._gripper_velocity = VelocityEstimate(1)  # the world has joint velocities, not the drive's

    def connect(self) -> RobotState:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sim-physics", daemon=True)
            self._thread.start()
        return self.read_state()

    def _run(self) -> None:
        dt = self.world.model.opt.timestep
        last, owed = time.monotonic(), 0.0  # sim seconds owed to the wall clock
        while not self._stop.wait(TICK_S):
            now = time.monotonic()
            owed = min(owed + (now - last) * self.speed, MAX_LAG_S)
            last = now
            steps = int(owed / dt)  # whole physics steps only, carrying the remainder: no drift
            if self.lockstep and self._period_ns:  # a servo loop drives this arm: wait for its commands
                due = self._commanded_ns + self._period_ns if self._commanded_ns >= 0 else 0
                steps = min(steps, max(0, (due - self.world.steps_ns) // round(dt * 1e9)))
            if steps:
                self.world.step(steps * dt)
                owed -= steps * dt

    def read_state(self) -> RobotState:
        with self.world.lock:
            now, gripper = time.monotonic(), self.world.gripper()
            velocities = np.append(self.world.joint_velocities(), self._gripper_velocity.update(now, [gripper]))
            return RobotState(self.world.joint_positions(), gripper, now, velocities)

    def command(self, positions: np.ndarray, gripper: float) -> None:
        self.world.set_target(np.asarray(positions, dtype=float), gripper)
        if self.lockstep:
            self._commanded_ns = self.world.steps_ns

    def set_servo_period(self, period: float) -> None:
        self._period_ns = round(period * 1e9)

    def stop(self) -> None:
        """Hold where the arm is now (targets := measured state)."""
        with self.world.lock:
            self.world.set_target(self.world.joint_positions(), self.world.gripper())

    def recover(self) -> RobotState:
        # the sim has no controller errors to clear; make sure physics runs and report the state
        return self.connect()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
