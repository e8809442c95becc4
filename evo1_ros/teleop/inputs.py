"""Where a teleop source's device input comes from, read without blocking the control timer.
ROS-free.

- `StreamedInput`: the newest value of an input that streams on a topic (a leader's JointState,
  a Joy pad or pedal, a Twist stream); the ROS node `put`s each converted message, and the input
  turns silent (DeviceError) after `timeout_s` without one.
- `DynamixelInput`: a Dynamixel leader arm read on a thread of its own (a sync read of seven
  servos at 57600 baud takes ~20 ms, longer than a callback may hold the executor), which
  re-opens the bus by itself after the adapter went away.
- `SpaceMouseInput`: a SpaceMouse, whose non-blocking HID reads take microseconds.

Each has `read()` (the newest value, or DeviceError naming the device and what happened),
`reconnect()` (DeviceError while the device is still gone) and `close()`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

from evo1_ros.teleop.device import CartesianCommand, DeviceError, SilenceDetector
from evo1_ros.teleop.leader import LeaderConfig, LeaderReading
from evo1_ros.teleop.spacemouse import SpaceMouseConfig, SpaceMouseReader

Value = TypeVar("Value")
REOPEN_PERIOD_S = 1.0  # how often a reader whose device went away tries to open it again


class StreamedInput(Generic[Value]):
    """The newest value put by a subscription; `read()` raises DeviceError before the first one
    and once none came for `timeout_s` (times on `clock`, monotonic seconds)."""

    def __init__(self, device: str, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.device = device
        self._silence = SilenceDetector(device, timeout_s)
        self._clock = clock
        self._value: Value | None = None
        self._lock = threading.Lock()  # put on the executor's thread, read on the timer's

    def put(self, value: Value) -> None:
        with self._lock:
            self._value = value
            self._silence.heard(self._clock())

    def read(self) -> Value:
        with self._lock:
            self._silence.check(self._clock())
            return self._value

    def reconnect(self) -> None:
        """Back once values flow again."""
        self.read()

    def close(self) -> None:
        pass


class DynamixelInput:
    """A Dynamixel leader (`LeaderConfig`) read every `period` s on a thread of its own; `read()`
    gives the newest reading, or DeviceError when the last read failed, or none succeeded for
    `timeout_s` (a stalled bus). The thread opens the bus, and opens it again every second after
    the adapter went away, so the leader comes back once it is plugged in again."""

    def __init__(self, config: LeaderConfig, period: float, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic):
        from evo1_ros.teleop.dynamixel import DynamixelLeader  # dynamixel-sdk: the teleop extra

        self.config, self.period, self.timeout_s, self._clock = config, period, timeout_s, clock
        self._bus = DynamixelLeader(config.port, config.baudrate, config.servo_ids)
        self._reading: tuple[float, LeaderReading] | None = None
        self._error: DeviceError | None = DeviceError(f"leader on {config.port}: not read yet")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dynamixel-leader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = self._clock()
        while not self._stop.is_set():
            try:
                if not self._bus.is_open:
                    self._bus.open()
                reading = self.config.reading(self._bus.read_positions())
            except DeviceError as error:
                with self._lock:
                    self._error = error
                wait = self.period if self._bus.is_open else REOPEN_PERIOD_S
            else:
                with self._lock:
                    self._reading, self._error = (self._clock(), reading), None
                wait = self.period
            deadline = max(deadline + wait, self._clock())
            self._stop.wait(max(0.0, deadline - self._clock()))

    def read(self) -> LeaderReading:
        with self._lock:
            if self._error is not None:
                raise self._error
            stamp, reading = self._reading
        age = self._clock() - stamp
        if age > self.timeout_s:
            raise DeviceError(f"leader on {self.config.port}: no reading for {age * 1e3:.0f} ms")
        return reading

    def reconnect(self) -> None:
        """The thread re-opens the bus; back once it reads again."""
        self.read()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._bus.close()


class SpaceMouseInput:
    """A SpaceMouse (`SpaceMouseConfig`), opened at once if it is there, else by a `reconnect()`;
    after it was unplugged, `reconnect()` opens it again."""

    def __init__(self, config: SpaceMouseConfig):
        self._reader = SpaceMouseReader(config)
        self._closed_because: DeviceError | None = None
        try:
            self.reconnect()
        except DeviceError:
            pass  # `read` says why

    def read(self) -> CartesianCommand:
        if not self._reader.is_open and self._closed_because is not None:
            raise self._closed_because
        try:
            return self._reader.read()
        except DeviceError as error:  # unplugged: the reader closed it
            self._closed_because = error
            raise

    def reconnect(self) -> None:
        if not self._reader.is_open:
            try:
                self._reader.open()
            except DeviceError as error:
                self._closed_because = error
                raise

    def close(self) -> None:
        self._reader.close()
