"""`LockstepWorld`: a SimWorld whose physics waits for its cameras, for recording demonstrations.

Rendering in software on a loaded CPU is slower than real time; a free-running sim would drop and
jitter frames. Here physics advances one camera frame period per rendered frame set, so in sim time
the frames are exactly 1/fps apart whatever the CPU does. ROS-free; `record_sim` runs the nodes on
its clock (`steps_ns` on /clock, use_sim_time).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from evo1_ros.sim.mjcf import CAMERAS
from evo1_ros.sim.world import SimWorld

WAIT_S = 5.0  # longest the camera thread waits for physics or the clock (only when shutting down)


class LockstepWorld(SimWorld):
    """A SimWorld whose physics waits for its cameras: after the last camera of a frame set is
    rendered, physics may run `frame_steps` steps and the renderer waits until it has, and until
    `clock_ns` (a node's ROS clock) shows the new time, so the next frame set's stamp is its time.

    `steps_ns` counts physics time in integer nanoseconds and never resets: the ROS clock."""

    def __init__(self, image_size: int, fps: float):
        self._moved = threading.Condition()  # guards _steps_left; never held while taking self.lock
        self._steps_left = 0
        self.steps_ns = 0
        self.clock_ns: Callable[[], int] | None = None
        super().__init__(image_size)
        timestep = self.model.opt.timestep
        self._step_ns = round(timestep * 1e9)
        self.frame_steps = max(1, round(1.0 / (fps * timestep)))

    def step(self, seconds: float) -> None:
        with self._moved:
            n = min(round(seconds / self.model.opt.timestep), self._steps_left)
            if n <= 0:
                return
            super().step(n * self.model.opt.timestep)
            self._steps_left -= n
            self.steps_ns += n * self._step_ns
            self._moved.notify_all()

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        with self._moved:  # hold the new scene until it has been filmed
            self._steps_left = 0
            self._moved.notify_all()

    def render(self, camera: str):
        pixels = super().render(camera)
        if camera == CAMERAS[-1]:
            with self._moved:
                self._steps_left = self.frame_steps
                # a timeout only if physics stopped (shutting down): never hang the camera thread
                self._moved.wait_for(lambda: self._steps_left == 0, timeout=WAIT_S)
                target = self.steps_ns
            deadline = time.monotonic() + WAIT_S
            while self.clock_ns is not None and self.clock_ns() < target and time.monotonic() < deadline:
                time.sleep(0.001)
        return pixels
