"""The observation a chunk starts from: the newest frame of each view and the arm's joint state at
the frames' capture stamp. ROS-free: the inference node feeds it what arrives, with the times.

Times are float seconds on one clock (the node's: wall or sim time). Every input has two: when it
arrived (`now` at the call) and when it was taken (its header stamp; None for an unstamped
message, which then counts as taken on arrival).

- Freshness: an input that has not arrived, or arrived longer than `max_age` ago, starts no chunk
  (`problem`).
- Pairing (`sync_to_images`): camera pipelines deliver frames tens of ms after the joint state of
  their instant, and demos pair frame and state of one instant; so the observation's moment is the
  oldest view's capture stamp and its state is the joint state interpolated there from a short
  history. Stamps that cannot be matched (cameras and joints on different clocks) fall back to the
  newest state as of now, with a note saying so.
- Resume gate: after `resume(now)` only inputs taken after that moment count; one taken shortly
  before and delivered after it shows the scene from before (in the sim: the previous episode). A
  stamp far from the resume is another clock's: such an input counts from its arrival.
- Joint-state history: a stamp older than the newest by more than `max_age` is a clock jump (a
  restarted driver, a replayed bag): the history starts over; a slightly older one is a message
  delivered out of order and takes its place in time.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

STATE_HISTORY_S = 2.0  # joint states kept to look up the arm at the frames' capture stamp


@dataclass
class Observation:
    images: list[Any]  # per view slot what `add_image` was given
    state: np.ndarray  # joint positions at `time`
    time: float  # the moment the observation shows; a chunk's first action belongs to it
    note: str | None = None  # why the pairing fell back to the newest state, if it did


class ObservationSync:
    def __init__(self, view_names: Sequence[str], max_age: float, sync_to_images: bool = True,
                 history_s: float = STATE_HISTORY_S):
        if not max_age > 0:
            raise ValueError(f"max_age must be > 0 s, got {max_age}")
        self.view_names = list(view_names)
        self.max_age, self.sync_to_images, self.history_s = max_age, sync_to_images, history_s
        self.resume(-math.inf)

    def resume(self, now: float) -> None:
        """Forget every input: the next observation is made of inputs taken after `now`."""
        self._resumed_at = now
        self._images: list[tuple[Any, float, float] | None] = [None] * len(self.view_names)  # (image, arrived, taken)
        self._state: tuple[np.ndarray, float] | None = None  # (positions, arrived) of the newest
        self._stamps: list[float] = []  # taken, increasing
        self._positions: list[np.ndarray] = []

    def _before_resume(self, taken: float) -> bool:
        return self._resumed_at - self.max_age <= taken < self._resumed_at

    def add_image(self, slot: int, image: Any, taken: float | None, now: float) -> bool:
        """Store the newest frame of a view slot; False if the resume gate dropped it."""
        taken = now if taken is None else taken
        if self._before_resume(taken):
            return False
        self._images[slot] = (image, now, taken)
        return True

    def add_state(self, positions: np.ndarray, taken: float | None, now: float) -> bool:
        """Store a joint state; False if the resume gate dropped it."""
        taken = now if taken is None else taken
        if self._before_resume(taken):
            return False
        positions = np.asarray(positions, dtype=float)
        if self._stamps and taken < self._stamps[-1] - self.max_age:  # a clock jump: start over
            self._stamps, self._positions = [], []
        at = bisect.bisect_right(self._stamps, taken)  # in time order, also when delivered out of order
        self._stamps.insert(at, taken)
        self._positions.insert(at, positions)
        self._state = (self._positions[-1], now)  # the newest in time; the joints are alive as of now
        cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.history_s)
        del self._stamps[:cut], self._positions[:cut]
        return True

    def problem(self, now: float) -> str | None:
        """Why the inputs cannot start a chunk now, or None if they can."""
        arrived = [None if e is None else e[1] for e in self._images]
        arrived.append(None if self._state is None else self._state[1])
        names = self.view_names + ["joint states"]
        missing = [n for n, t in zip(names, arrived) if t is None]
        if missing:
            return f"waiting for {missing}"
        stale = [n for n, t in zip(names, arrived) if now - t > self.max_age]
        if stale:
            return f"stale observation: nothing new on {stale} for {1000 * self.max_age:.0f} ms"
        return None

    def observation(self, now: float) -> Observation:
        """The observation to start a chunk from (call when `problem(now)` is None)."""
        problem = self.problem(now)
        if problem is not None:
            raise RuntimeError(problem)
        images = [e[0] for e in self._images]
        newest = self._state[0].copy()
        if not self.sync_to_images:
            return Observation(images, newest, now)
        moment = min(e[2] for e in self._images)
        # Frames are late by a camera pipeline's latency, never by seconds: a stamp outside the
        # history, or far from now, is on another clock than the joints or this node.
        if not (self._stamps[0] - self.max_age <= moment <= now + self.max_age and moment >= now - self.history_s):
            return Observation(images, newest, now, note=(
                f"camera stamps are {now - moment:+.3f} s from now, outside the joint-state history: cameras "
                "and joints are not stamped on one clock; using the newest state as of now"))
        stamps, positions = np.array(self._stamps), np.array(self._positions)
        state = np.array([np.interp(moment, stamps, positions[:, j]) for j in range(positions.shape[1])])
        return Observation(images, state, min(moment, now))
