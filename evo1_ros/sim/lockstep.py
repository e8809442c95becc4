"""`LockstepWorld`: a SimWorld on sim time, whose physics waits for its cameras and, when asked,
for the policy. ROS-free; the recording graph and `evo1-ros eval --sim-time` run their nodes on
its clock (`steps_ns` on /clock, use_sim_time).

Rendering in software on a loaded CPU is slower than real time, and a free-running sim would drop
and jitter frames. Here a frame set is captured at sim time T, then physics may run one camera
period, and the next frame set waits until it has: frames are exactly 1/fps apart in sim time
whatever the CPU does. While `hold()` is held (the eval holds it around each policy call) physics
does not advance at all, so in sim time a chunk is computed in no time, as on an infinitely fast
computer: the success rate measures the policy, not the machine.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

from evo1_ros.sim.world import SimWorld

WAIT_S = 5.0  # longest a frame waits for physics or the clock (only when shutting down)


class LockstepWorld(SimWorld):
    """`steps_ns` counts physics time in integer nanoseconds and never resets: the ROS clock.
    `clock_ns` (a node's ROS clock, set by `nodes.sim.sim_clock_node`) lets a frame wait until
    the nodes see its time."""

    def __init__(self, image_size: int, fps: float):
        self._moved = threading.Condition()  # guards _steps_left and _holds; never held while taking self.lock
        self._steps_left = 0
        self._holds = 0
        self.steps_ns = 0
        self.clock_ns: Callable[[], int] | None = None
        super().__init__(image_size)
        timestep = self.model.opt.timestep
        self._step_ns = round(timestep * 1e9)
        self.frame_steps = max(1, round(1.0 / (fps * timestep)))

    def step(self, seconds: float) -> None:
        with self._moved:
            n = 0 if self._holds else min(round(seconds / self.model.opt.timestep), self._steps_left)
            if n <= 0:
                return
            super().step(n * self.model.opt.timestep)
            self._steps_left -= n
            self.steps_ns += n * self._step_ns
            self._moved.notify_all()

    def reset(self, seed: int | None = None, task: str | None = None, scene: str | None = None) -> None:
        super().reset(seed, task, scene)
        with self._moved:  # hold the new scene until it has been filmed
            self._steps_left = 0
            self._moved.notify_all()

    @contextlib.contextmanager
    def frame(self, abort: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """Capture one frame set inside: on entry, wait until physics has run the last frame
        period and the ROS clock shows the new time (so a stamp taken now is the frame's time);
        on exit, let physics run the next period. The waits end early once `abort()` is true
        (the camera is shutting down: check it again inside), and never hang on stopped physics."""
        deadline = time.monotonic() + WAIT_S
        with self._moved:
            # A slow policy (a hold) is waited out; stopped physics only until the deadline.
            while not self._moved.wait_for(lambda: self._steps_left == 0, timeout=0.05):
                if abort() or (not self._holds and time.monotonic() > deadline):
                    break
            target = self.steps_ns
        deadline = time.monotonic() + WAIT_S  # afresh: a long hold must not cut the clock's wait short
        while (self.clock_ns is not None and self.clock_ns() < target and not abort()
               and time.monotonic() < deadline):
            time.sleep(0.001)
        yield
        with self._moved:
            self._steps_left = self.frame_steps
            self._moved.notify_all()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Physics stands still inside (holds nest; one thread's hold stops every stepper)."""
        with self._moved:
            self._holds += 1
        try:
            yield
        finally:
            with self._moved:
                self._holds -= 1
                self._moved.notify_all()
