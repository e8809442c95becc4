"""The servo loop: trajectory -> interpolator -> safety filter -> backend, in its own thread. ROS-free.

`ServoLoop` owns the backend. Its `tick` is the only place that calls `backend.command`, and it
only ever passes `SafetyFilter.step`'s output, so nothing reaches the arm unfiltered.

Threads: the servo thread owns the filter's motion state, the interpolator and the backend (all
backend calls happen there, recovery included, so backends need no locking). Other threads check
trajectories themselves and hand work to the servo thread through an inbox it empties at the start
of each tick; the only state they set directly are the e-stop flag (so it acts on the very next
tick) and its release, the active flag and the limits (a whole new `SafetyLimits`). There is no
lock the servo thread could wait on while a lower-priority thread holding it is preempted.

Timing: absolute deadlines (no drift), a coarse `time.sleep` to just before each deadline, then a
short spin, because sleep wake-ups come late by more than the jitter we allow. Where the OS allows
it (root, or an rtprio limit) the thread runs SCHED_FIFO, so inference threads and other processes
cannot delay its wake-ups. A tick that overruns (the SDK's `set_servo_angle_j` sometimes blocks
~190 ms) skips the missed deadlines instead of bursting commands to catch up; the filter's
per-tick bounds then make the arm lag the trajectory rather than jump. After a stall of more than
two periods the filter goes on from rest: the arm stood at the last command meanwhile.

Two clocks: the thread is paced on the monotonic clock (the control box's cadence), while `clock`
times trajectories, the watchdog and resets. They are the same by default; a driver on sim time
passes the simulation's clock, so trajectories play out in sim time while the sim pauses (for
rendering, or for the policy in a lockstep eval). On sim time (`ticks_on_clock`) the filter also
steps once per period of that clock, not of the wall clock: a tick that finds the clock less than
a period on runs the inbox and reads the arm but commands nothing. The filter's motion per sim
second then does not depend on how many wall-clock ticks a loaded CPU manages, and a lockstep sim
backend, whose physics waits for each period's command (`DriverBackend.set_servo_period`), sees
exactly one command per period.

A backend error never ends the loop: it stops the arm, keeps the error in words in `status()`,
sends nothing until `recover()` succeeds, and keeps reporting the measured state when it can.
Anything else that escapes a tick (a bug, a failing `on_state`) ends the thread, but not
silently: the loop stops the arm, `status().fault` says "servo thread died: ..." and `on_death`
is called, so the owner can take itself down instead of looking alive while commanding nothing.

Holding and teaching. Until `activate()` (and after `deactivate()`) the loop holds: trajectories
are refused and the filter brings the arm to rest and keeps it there. In teaching mode
(`set_teaching(True)`) the arm is moved by hand: the loop commands no joint and follows only the
gripper column of the trajectories it gets, through the same filter (range, speed, watchdog,
e-stop) and the backend's `command_gripper`, so the operator can open and close the gripper while
hand-guiding; leaving it, the filter starts from where the arm was put, at rest.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np

from evo1_ros.robot.backend import BackendError, DriverBackend, RobotState
from evo1_ros.runtime.safety import SafetyFilter, SafetyLimits, TrajectoryRejected
from evo1_ros.runtime.trajectory import TrajectoryInterpolator

MAX_SERVO_RATE_HZ = 250.0  # the xArm control box accepts set_servo_angle_j up to 250 Hz
SPIN_S = 0.0005  # busy-wait this long before each deadline instead of trusting sleep
GIL_SWITCH_INTERVAL_S = 0.0005  # a woken servo thread waits about this long at most for the GIL
CLOCK_EPS_S = 1e-6  # sim clock times built from integer nanoseconds still count as a period apart
TIMING_WINDOW = 1000  # ticks kept for timing statistics


@dataclass(frozen=True)
class ServoStatus:
    state: RobotState | None  # last measured state
    command: np.ndarray  # last filtered command (7,)
    estopped: bool
    stopping_reason: str  # why the filter is bringing the arm to rest; "" when following
    fault: str  # backend error in words; "" when none
    fault_code: int | None
    fault_time: float | None  # time.monotonic() of the tick that saw the fault (and stopped the arm)
    rejected: str  # why the last refused trajectory was refused; "" when none yet
    realtime: bool  # the servo thread got SCHED_FIFO
    active: bool  # following trajectories (else holding)
    teaching: bool  # the arm is moved by hand; nothing is commanded
    alive: bool  # the servo thread runs (False before start, after shutdown, or when it died)
    ticks: int
    overruns: int  # ticks that ran past the next deadline (those deadlines are skipped)
    max_late_s: float  # worst wake-up lateness over the last TIMING_WINDOW ticks
    max_tick_s: float  # longest tick (backend calls included) over the last TIMING_WINDOW ticks


def sleep_until(deadline: float) -> None:
    """Until time.monotonic() reaches `deadline`."""
    remaining = deadline - time.monotonic() - SPIN_S
    if remaining > 0:
        time.sleep(remaining)
    while time.monotonic() < deadline:
        pass


class ServoLoop:
    def __init__(self, backend: DriverBackend, limits: SafetyLimits = SafetyLimits(), rate_hz: float = 100.0,
                 on_state: Callable[[RobotState], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, realtime_priority: int = 50,
                 on_death: Callable[[str], None] | None = None, ticks_on_clock: bool = False):
        """on_state(measured state) is called on the servo thread after every tick;
        clock: the trajectory clock (see the module's doc; the thread is always paced on
        time.monotonic); realtime_priority: SCHED_FIFO priority to ask for (0: don't);
        on_death(reason) is called on the servo thread if it dies (the arm stopped first);
        ticks_on_clock: step the filter once per period of `clock` (sim time; module doc)."""
        if not 0 < rate_hz <= MAX_SERVO_RATE_HZ:
            raise ValueError(f"servo rate must be in (0, {MAX_SERVO_RATE_HZ:.0f}] Hz, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self.clock = clock
        self.ticks_on_clock = ticks_on_clock
        self._next_step = -math.inf  # with ticks_on_clock: the clock time of the filter's next step
        self.realtime_priority = realtime_priority
        self.realtime = False
        self._backend = backend
        backend.set_servo_period(self.period)
        self._filter = SafetyFilter(limits, self.period)
        self._trajectory = TrajectoryInterpolator()
        self._on_state = on_state
        self._on_death = on_death
        self._active = self._teaching = False
        self._inbox: collections.deque = collections.deque()  # (fn, future or None), run on the servo thread
        self._state: RobotState | None = None
        self._connected = False
        self._commanded_at = -math.inf  # when the filter's last command was computed
        # Trajectories stamped before the last reset/recover were planned for a world that is gone
        # (a window in flight during a sim reset would drag the arm back): refused.
        self._not_before = -math.inf
        self._fault, self._fault_code, self._fault_time, self._rejected = "", None, None, ""
        self._ticks = self._overruns = 0
        self.wake_times: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._late: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._tick_durations: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self.death_details = ""  # the traceback, when the servo thread died

    # --- called from any thread ---------------------------------------------------------------

    def connect(self) -> bool:
        """Bring the backend up and start from its measured state. On failure the loop holds the
        error as its fault (nothing is commanded) and `recover()` tries to connect again."""
        self._call(self._recover)
        return not self._fault

    def start(self) -> None:
        """Run `tick` every period on a thread of its own (call `connect` first). Returns once the
        thread runs, with `realtime` telling whether it got SCHED_FIFO."""
        # Process-wide, but harmless: other threads just hand the GIL over more often.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._running.set()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="servo_loop", daemon=True)
        self._thread.start()
        started.wait()

    def shutdown(self) -> None:
        """Stop the thread, halt the arm and release the backend."""
        self._running.clear()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        for call in (self._backend.stop, self._backend.close):
            try:
                call()
            except Exception:  # shutting down: nothing left to report to
                pass

    def activate(self) -> None:
        """Follow trajectories from now on (those planned before are refused)."""
        self._not_before = self.clock()
        self._inbox.append((self._trajectory.clear, None))
        self._active = True

    def deactivate(self) -> None:
        """Hold: refuse trajectories, bring the arm to rest and keep it there."""
        self._active = False
        self._inbox.append((self._trajectory.clear, None))

    def set_limits(self, limits: SafetyLimits) -> None:
        """New safety limits, in force from the next tick on (whole: the filter reads them once a tick)."""
        self._filter.limits = limits

    @property
    def limits(self) -> SafetyLimits:
        return self._filter.limits

    def submit(self, times: np.ndarray, points: np.ndarray, stamp: float | None = None) -> None:
        """Follow a trajectory: times (n,) on this loop's clock, points (n, 7) joints + gripper,
        planned at `stamp` (this clock; None = now); in teaching mode only its gripper column is
        followed. Raises TrajectoryRejected (inactive, e-stop latched, NaN/inf, times not
        increasing, all stale, planned before the last reset/recover/activation)."""
        arrival = self.clock()
        try:
            if not self._active:
                raise TrajectoryRejected("the driver is not active (holding the arm); activate it first")
            if stamp is not None and stamp < self._not_before:
                raise TrajectoryRejected("trajectory was planned before the last reset/recover")
            times, points = self._filter.check_trajectory(times, points, arrival)
        except TrajectoryRejected as e:
            self._rejected = str(e)
            raise
        self._inbox.append((functools.partial(self._follow, times, points, arrival), None))

    def emergency_stop(self) -> None:
        self._filter.emergency_stop()  # directly: the next tick already brakes
        self._inbox.append((self._trajectory.clear, None))

    def reset(self) -> None:
        self._not_before = self.clock()
        self._filter.reset()
        self._inbox.append((self._trajectory.clear, None))

    def recover(self, timeout: float = 10.0) -> RobotState:
        """Clear a backend fault. Raises BackendError when the arm cannot be made ready."""
        return self._on_servo_thread(self._recover, timeout)

    def set_teaching(self, on: bool, timeout: float = 10.0) -> RobotState:
        """Enter (True) or leave teaching mode: the arm is moved by hand, trajectories move only the
        gripper. Leaving it, the arm holds where it was put. Raises BackendError (e.g. a backend
        without one)."""
        return self._on_servo_thread(functools.partial(self._set_teaching, on), timeout)

    def status(self) -> ServoStatus:
        f = self._filter
        stopping = f.stopping_reason
        if not self._active:
            stopping = "inactive: holding the arm"
        elif self._teaching:
            stopping = "teaching mode: the arm is moved by hand (trajectories move the gripper only)"
        return ServoStatus(
            state=self._state, command=np.append(f.positions, f.gripper), estopped=f.estopped,
            stopping_reason=stopping, fault=self._fault, fault_code=self._fault_code, fault_time=self._fault_time,
            rejected=self._rejected, realtime=self.realtime, active=self._active, teaching=self._teaching,
            alive=self._thread is not None and self._thread.is_alive() and self._running.is_set(),
            ticks=self._ticks, overruns=self._overruns,
            max_late_s=max(self._late, default=0.0), max_tick_s=max(self._tick_durations, default=0.0),
        )

    def backend_diagnostics(self) -> dict[str, str]:
        return self._backend.diagnostics()

    def _on_servo_thread(self, fn, timeout: float):
        """fn() on the servo thread (here, when the loop does not run); its result or exception."""
        if not self._running.is_set():
            return fn()
        done = concurrent.futures.Future()
        self._inbox.append((fn, done))
        return done.result(timeout=timeout)

    # --- servo thread -------------------------------------------------------------------------

    def _realtime(self, threads: list[int]) -> bool:
        """SCHED_FIFO at our priority for these threads (0: the calling one), where the OS allows."""
        try:
            for thread in threads:
                os.sched_setscheduler(thread, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
            return True
        except (AttributeError, OSError):  # not Linux, or not allowed: normal priority
            return False

    def _run(self, started: threading.Event) -> None:
        if self.realtime_priority > 0:
            self.realtime = self._realtime([0]) and self._realtime(self._backend.helper_threads())
        started.set()
        deadline = time.monotonic()
        try:
            while self._running.is_set():
                sleep_until(deadline)
                woke = time.monotonic()
                self.wake_times.append(woke)
                self._late.append(woke - deadline)
                self.tick()
                done = time.monotonic()
                self._tick_durations.append(done - woke)
                if done - woke > 2 * self.period and self._backend.stalls_stop_the_arm:
                    self._filter.come_to_rest()  # the backend stalled: the arm stood at the last command
                deadline += self.period
                behind = done - deadline
                if behind > 0:  # overran: skip the deadlines already missed, keep the phase
                    self._overruns += 1
                    deadline += math.ceil(behind / self.period) * self.period
        except Exception as e:
            self._die(f"servo thread died: {type(e).__name__}: {e}", traceback.format_exc())

    def _die(self, reason: str, details: str) -> None:
        self._running.clear()
        self._trajectory.clear()
        self._fault, self._fault_code, self._fault_time, self.death_details = reason, None, time.monotonic(), details
        try:
            self._backend.stop()
        except Exception as e:
            self._fault += f" (and stopping the arm failed: {e})"
        if self._on_death is not None:
            self._on_death(self._fault)

    def tick(self) -> None:
        """One servo cycle: run the inbox, filter the trajectory's target, command, read. With
        `ticks_on_clock`, no command (only the inbox and a read) until the clock is a period on."""
        while self._inbox:
            fn, done = self._inbox.popleft()
            try:
                result = fn()
                if done is not None:
                    done.set_result(result)
            except Exception as e:
                if done is None:
                    raise
                done.set_exception(e)
        if not self._connected:
            return
        now = self.clock()
        if not self.ticks_on_clock:
            self._command(now)
        elif now >= self._next_step - CLOCK_EPS_S:
            self._next_step = now + self.period
            self._command(now)
        self._ticks += 1
        state = self._call(self._backend.read_state)
        if state is None:
            return
        self._state = state
        if state.error_code and not self._fault:  # an error the controller raised on its own
            self._fail(state.error_code, state.error_words)
        if self._fault:  # follow the arm, so commands resume from where it really is
            self._filter.sync(state.positions, state.gripper)
        elif self._teaching:  # the joints follow the hand; the gripper command stays the filter's
            self._filter.sync(state.positions, self._filter.gripper)
        if self._on_state is not None:
            self._on_state(state)

    def _command(self, now: float) -> None:
        """Filter the trajectory's target at `now` and send it (in teaching mode, the gripper alone)."""
        target = self._trajectory.sample(now) if self._active else None
        if self._teaching:
            # The joints are in the operator's hands (the filter holds them where they were
            # measured): only the gripper command goes out, and only while a trajectory is followed.
            if target is not None:
                target = np.append(self._filter.positions, target[-1])
            _, gripper = self._filter.step(target, now)
            self._commanded_at = now
            if not (self._fault or self._filter.stopping_reason):
                self._call(self._backend.command_gripper, gripper)
        else:
            positions, gripper = self._filter.step(target, now)
            self._commanded_at = now
            if not self._fault:
                self._call(self._backend.command, positions, gripper)

    def _follow(self, times: np.ndarray, points: np.ndarray, arrival: float) -> None:
        if self._filter.estopped:  # latched after this trajectory was checked
            self._rejected = "emergency stop is latched; call reset first"
            return
        if self._fault or not self._connected:
            self._rejected = "the backend has an error; call recover first"
            return
        if not self._active:  # deactivated since it was checked
            return
        self._filter.feed_watchdog(arrival)
        # A trajectory that starts in the future is joined from where the old one's target was at
        # the last command (or from the command itself when there was none), at that command's
        # time: the target stays continuous across windows, so the arm does not slow at seams.
        start = self._trajectory.sample(self._commanded_at)
        if start is None:
            start = np.append(self._filter.positions, self._filter.gripper)
        self._trajectory.set(times, points, self._commanded_at, start)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except BackendError as e:
            self._fail(e.code, e.words)
        except Exception as e:  # a socket error etc. must not kill the servo thread either
            self._fail(None, f"{type(e).__name__}: {e}")
        return None

    def _fail(self, code: int | None, words: str) -> None:
        self._trajectory.clear()
        if self._fault:  # already stopped for the first error; keep reporting that one
            return
        self._fault, self._fault_code, self._fault_time = words, code, time.monotonic()
        if self._connected:
            try:
                self._backend.stop()
            except Exception as e:
                self._fault += f" (and stopping failed: {e})"

    def _start_over(self, state: RobotState) -> RobotState:
        """Go on from the measured state at rest, with no trajectory (after recover or teaching)."""
        self._not_before = self.clock()
        self._filter.sync(state.positions, state.gripper)
        self._commanded_at = self.clock()
        self._trajectory.clear()
        self._state = state
        return state

    def _recover(self) -> RobotState:
        try:
            state = self._backend.recover() if self._connected else self._backend.connect()
        except BackendError as e:
            self._fault, self._fault_code, self._fault_time = e.words, e.code, time.monotonic()
            raise
        self._connected, self._teaching = True, False
        self._fault, self._fault_code, self._fault_time = "", None, None
        if self.realtime:  # a reconnected backend has new helper threads
            self._realtime(self._backend.helper_threads())
        return self._start_over(state)

    def _set_teaching(self, on: bool) -> RobotState:
        if self._fault or not self._connected:
            raise BackendError(self._fault_code or -1, f"cannot change teaching mode: {self._fault or 'not connected'}")
        state = self._backend.set_teaching(on)
        self._teaching = on
        return self._start_over(state)
