"""The servo loop: trajectory -> interpolator -> safety filter -> backend, in its own thread. ROS-free.

`ServoLoop` owns the backend. Its `tick` is the only place that calls `backend.command`, and it
only ever passes `SafetyFilter.step`'s output, so nothing reaches the arm unfiltered. All backend
calls happen on the servo thread (recovery included), so backends need no locking.

Timing: absolute deadlines (no drift), a coarse `time.sleep` to just before each deadline, then a
short spin, because sleep wake-ups under load are late by more than the jitter we allow. A tick
that overruns (the SDK's `set_servo_angle_j` sometimes blocks ~190 ms) skips the missed deadlines
instead of bursting commands to catch up; the filter's per-tick bounds then make the arm lag the
trajectory rather than jump.

A backend error never ends the loop: it stops the arm, keeps the error in words in `status()`,
sends nothing until `recover()` succeeds, and keeps reporting the measured state when it can.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from evo1_ros.robot.backend import BackendError, DriverBackend, RobotState
from evo1_ros.runtime.safety import SafetyFilter, SafetyLimits
from evo1_ros.runtime.trajectory import TrajectoryInterpolator

MAX_SERVO_RATE_HZ = 250.0  # the xArm control box accepts set_servo_angle_j up to 250 Hz
SPIN_S = 0.0005  # busy-wait this long before each deadline instead of trusting sleep
GIL_SWITCH_INTERVAL_S = 0.0005  # a woken servo thread waits at most this for the GIL
TIMING_WINDOW = 1000  # ticks kept for timing statistics


@dataclass(frozen=True)
class ServoStatus:
    state: RobotState | None  # last measured state
    command: np.ndarray  # last filtered command (7,)
    estopped: bool
    stopping_reason: str  # why the filter is bringing the arm to rest; "" when following
    fault: str  # backend error in words; "" when none
    fault_code: int | None
    rejected: str  # why the last refused trajectory was refused; "" when none yet
    ticks: int
    overruns: int  # ticks that ran past the next deadline (those deadlines are skipped)
    max_late_s: float  # worst wake-up lateness over the last TIMING_WINDOW ticks
    max_tick_s: float  # longest tick (backend calls included) over the last TIMING_WINDOW ticks


def sleep_until(deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
    remaining = deadline - clock() - SPIN_S
    if remaining > 0:
        time.sleep(remaining)
    while clock() < deadline:
        pass


class ServoLoop:
    def __init__(self, backend: DriverBackend, limits: SafetyLimits = SafetyLimits(), rate_hz: float = 100.0,
                 on_state: Callable[[RobotState, np.ndarray], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 < rate_hz <= MAX_SERVO_RATE_HZ:
            raise ValueError(f"servo rate must be in (0, {MAX_SERVO_RATE_HZ:.0f}] Hz, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self._backend = backend
        self._filter = SafetyFilter(limits, self.period)
        self._trajectory = TrajectoryInterpolator()
        self._on_state = on_state
        self.clock = clock
        self._lock = threading.Lock()  # guards filter + trajectory between servo and caller threads
        self._requests: collections.deque = collections.deque()  # (fn, future) run on the servo thread
        self._state: RobotState | None = None
        self._connected = False
        self._fault, self._fault_code, self._rejected = "", None, ""
        self._ticks = self._overruns = 0
        self.wake_times: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._late: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._tick_durations: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    # --- called from any thread ---------------------------------------------------------------

    def connect(self) -> bool:
        """Bring the backend up and start from its measured state. On failure the loop holds the
        error as its fault (nothing is commanded) and `recover()` tries to connect again."""
        self._call(self._recover)
        return not self._fault

    def start(self) -> None:
        """Run `tick` every period on a thread of its own (call `connect` first)."""
        # Process-wide, but harmless: other threads just hand the GIL over more often.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="servo_loop", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the thread, halt the arm and release the backend."""
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for call in (self._backend.stop, self._backend.close):
            try:
                call()
            except Exception:  # shutting down: nothing left to report to
                pass

    def submit(self, times: np.ndarray, points: np.ndarray) -> None:
        """Follow a trajectory: times (n,) on this loop's clock, points (n, 7) joints + gripper.
        Raises TrajectoryRejected (e-stop latched, NaN/inf, times not increasing, all stale)."""
        with self._lock:
            now = self.clock()
            try:
                times, points = self._filter.check_trajectory(times, points, now)
            except ValueError as e:
                self._rejected = str(e)
                raise
            current = np.append(self._filter.positions, self._filter.gripper)
            self._trajectory.set(times, points, now, current)

    def emergency_stop(self) -> None:
        with self._lock:
            self._filter.emergency_stop()
            self._trajectory.clear()

    def reset(self) -> None:
        with self._lock:
            self._filter.reset()
            self._trajectory.clear()

    def recover(self, timeout: float = 10.0) -> RobotState:
        """Clear a backend fault (on the servo thread, or here when the loop is not running).
        Raises BackendError when the arm cannot be made ready."""
        if not self._running.is_set():
            return self._recover()
        done = concurrent.futures.Future()
        self._requests.append((self._recover, done))
        return done.result(timeout=timeout)

    def status(self) -> ServoStatus:
        with self._lock:
            command = np.append(self._filter.positions, self._filter.gripper)
            estopped, stopping = self._filter.estopped, self._filter.stopping_reason
        return ServoStatus(
            state=self._state, command=command, estopped=estopped, stopping_reason=stopping,
            fault=self._fault, fault_code=self._fault_code, rejected=self._rejected, ticks=self._ticks,
            overruns=self._overruns, max_late_s=max(self._late, default=0.0),
            max_tick_s=max(self._tick_durations, default=0.0),
        )

    # --- servo thread -------------------------------------------------------------------------

    def _run(self) -> None:
        deadline = self.clock()
        while self._running.is_set():
            sleep_until(deadline, self.clock)
            woke = self.clock()
            self.wake_times.append(woke)
            self._late.append(woke - deadline)
            self.tick()
            done = self.clock()
            self._tick_durations.append(done - woke)
            deadline += self.period
            behind = done - deadline
            if behind > 0:  # overran: skip the deadlines already missed, keep the phase
                self._overruns += 1
                deadline += math.ceil(behind / self.period) * self.period

    def tick(self) -> None:
        """One servo cycle: run queued requests, filter the trajectory's target, command, read."""
        while self._requests:
            fn, done = self._requests.popleft()
            try:
                done.set_result(fn())
            except Exception as e:
                done.set_exception(e)
        if not self._connected:
            return
        now = self.clock()
        with self._lock:
            positions, gripper = self._filter.step(self._trajectory.sample(now), now)
        self._ticks += 1
        if not self._fault:
            self._call(self._backend.command, positions, gripper)
        state = self._call(self._backend.read_state)
        if state is None:
            return
        self._state = state
        if state.error_code and not self._fault:  # an error the controller raised on its own
            self._fail(state.error_code, state.error_words)
        if self._fault:  # follow the arm, so recovery starts from where it really is
            with self._lock:
                self._filter.sync(state.positions, state.gripper)
        if self._on_state is not None:
            self._on_state(state, np.append(positions, gripper))

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except BackendError as e:
            self._fail(e.code, e.words)
        except Exception as e:  # a socket error etc. must not kill the servo thread either
            self._fail(None, f"{type(e).__name__}: {e}")
        return None

    def _fail(self, code: int | None, words: str) -> None:
        with self._lock:
            self._trajectory.clear()
        if self._fault:  # already stopped for the first error; keep reporting that one
            return
        self._fault, self._fault_code = words, code
        if self._connected:
            try:
                self._backend.stop()
            except Exception as e:
                self._fault += f" (and stopping failed: {e})"

    def _recover(self) -> RobotState:
        try:
            state = self._backend.recover() if self._connected else self._backend.connect()
        except BackendError as e:
            self._fault, self._fault_code = e.words, e.code
            raise
        self._connected = True
        self._adopt(state)
        return state

    def _adopt(self, state: RobotState) -> None:
        """Start over from a measured state at rest, with no trajectory and no fault."""
        with self._lock:
            self._filter.sync(state.positions, state.gripper)
            self._trajectory.clear()
        self._state = state
        self._fault, self._fault_code = "", None
