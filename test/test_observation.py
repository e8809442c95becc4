"""ObservationSync on a manual clock: freshness, pairing at the frames' stamp, resume gate, clock jumps."""

import numpy as np
import pytest

from evo1_ros.runtime.observation import STATE_HISTORY_S, ObservationSync

VIEWS = ["/cam/base", "/cam/wrist"]
SPEED = 0.5  # rad/s of the arm in these tests


def q(t):
    """The arm moving linearly: every joint at SPEED * t."""
    return np.full(7, SPEED * t)


def feed_states(sync, start, stop, period=0.01, lag=0.0):
    """Joint states stamped when measured (start..stop), delivered `lag` later."""
    for t in np.arange(start, stop, period):
        sync.add_state(q(t), t, t + lag)


def test_pairs_frames_with_the_state_at_their_capture_stamp():
    sync = ObservationSync(VIEWS, max_age=0.2)
    feed_states(sync, 10.0, 11.0)
    # Frames taken at 10.85 (base) and 10.87 (wrist) arrive at 11.0, 150 ms late.
    sync.add_image(0, "base", 10.85, 11.0)
    sync.add_image(1, "wrist", 10.87, 11.0)
    obs = sync.observation(11.0)
    assert obs.images == ["base", "wrist"] and obs.note is None
    assert obs.time == pytest.approx(10.85)  # the oldest view's stamp
    np.testing.assert_allclose(obs.state, q(10.85), atol=1e-9)  # interpolated between two states


def test_missing_view_and_missing_joints_are_named():
    sync = ObservationSync(VIEWS, max_age=0.2)
    assert sync.problem(1.0) == f"waiting for {VIEWS + ['joint states']}"
    sync.add_image(0, "base", None, 1.0)
    sync.add_state(q(1.0), None, 1.0)
    assert sync.problem(1.0) == "waiting for ['/cam/wrist']"
    with pytest.raises(RuntimeError, match="waiting for"):
        sync.observation(1.0)


def test_stale_inputs_start_no_chunk():
    sync = ObservationSync(VIEWS, max_age=0.2)
    sync.add_image(0, "base", None, 1.0)
    sync.add_image(1, "wrist", None, 1.1)
    sync.add_state(q(1.1), None, 1.15)
    assert sync.problem(1.15) is None
    # The base camera stops: 0.25 s later it is stale, the rest is not.
    assert sync.problem(1.25) == "stale observation: nothing new on ['/cam/base'] for 200 ms"
    sync.add_image(0, "base", None, 1.26)
    assert sync.problem(1.3) is None
    assert "joint states" in sync.problem(1.5)


def test_unstamped_inputs_count_as_taken_on_arrival():
    sync = ObservationSync(VIEWS, max_age=0.2)
    for t in np.arange(5.0, 6.0, 0.01):
        sync.add_state(q(t), None, t)
    sync.add_image(0, "base", None, 5.9)
    sync.add_image(1, "wrist", None, 5.95)
    obs = sync.observation(6.0)
    assert obs.time == pytest.approx(5.9) and obs.note is None
    np.testing.assert_allclose(obs.state, q(5.9), atol=1e-9)


def test_without_pairing_the_newest_state_and_now():
    sync = ObservationSync(VIEWS, max_age=0.2, sync_to_images=False)
    feed_states(sync, 10.0, 11.0)
    sync.add_image(0, "base", 10.85, 11.0)
    sync.add_image(1, "wrist", 10.85, 11.0)
    obs = sync.observation(11.0)
    assert obs.time == 11.0
    np.testing.assert_allclose(obs.state, q(10.99))


def test_frames_on_another_clock_fall_back_to_the_newest_state_with_a_note():
    sync = ObservationSync(VIEWS, max_age=0.2)
    feed_states(sync, 10.0, 11.0)
    sync.add_image(0, "base", 110.9, 11.0)  # 100 s ahead: another clock
    sync.add_image(1, "wrist", 110.9, 11.0)
    obs = sync.observation(11.0)
    assert obs.time == 11.0 and "not stamped on one clock" in obs.note
    np.testing.assert_allclose(obs.state, q(10.99))


def test_resume_drops_inputs_taken_before_it_and_forgets_the_rest():
    sync = ObservationSync(VIEWS, max_age=0.2)
    feed_states(sync, 10.0, 11.0)
    sync.add_image(0, "base", 10.9, 11.0)
    sync.add_image(1, "wrist", 10.9, 11.0)
    sync.resume(11.0)
    assert sync.problem(11.0).startswith("waiting for")
    # A frame taken 50 ms before the resume, delivered after it, shows the old scene: dropped.
    assert not sync.add_image(0, "old base", 10.95, 11.05)
    assert not sync.add_state(q(10.99), 10.99, 11.05)
    # A stamp far from the resume is another clock's: it counts from its arrival.
    assert sync.add_image(1, "wrist", 3.0, 11.06)
    # Inputs taken after the resume count.
    assert sync.add_image(0, "new base", 11.05, 11.07)
    feed_states(sync, 11.01, 11.1)
    assert sync.observation(11.1).images == ["new base", "wrist"]


def test_a_clock_jump_back_restarts_the_history():
    sync = ObservationSync(VIEWS, max_age=0.2)
    feed_states(sync, 100.0, 101.0)
    # The driver restarts with its clock at 5 s: the old history would interpolate nonsense.
    for t in np.arange(5.0, 5.5, 0.01):
        sync.add_state(q(t) + 1.0, t, 101.0 + (t - 5.0))
    sync.add_image(0, "base", 5.3, 101.5)
    sync.add_image(1, "wrist", 5.3, 101.5)
    obs = sync.observation(101.5)
    # Frames at 5.3 are ~96 s from the node's now: another clock, so the newest state is used...
    assert "not stamped on one clock" in obs.note
    np.testing.assert_allclose(obs.state, q(5.49) + 1.0)
    # ...and on the node's clock the restarted history pairs exactly.
    sync = ObservationSync(VIEWS, max_age=0.2)
    feed_states(sync, 100.0, 101.0)
    for t in np.arange(50.0, 50.5, 0.01):
        sync.add_state(q(t) + 1.0, t, t)
    sync.add_image(0, "base", 50.3, 50.5)
    sync.add_image(1, "wrist", 50.3, 50.5)
    obs = sync.observation(50.5)
    assert obs.note is None
    np.testing.assert_allclose(obs.state, q(50.3) + 1.0, atol=1e-9)


def test_states_delivered_out_of_order_take_their_place_in_time():
    sync = ObservationSync(VIEWS, max_age=0.2)
    stamps = np.arange(20.0, 20.5, 0.01)
    order = np.arange(len(stamps))
    order[10:20] = order[10:20][::-1]  # ten states arrive in reverse order
    for i in order:
        sync.add_state(q(stamps[i]), stamps[i], 20.5)
    sync.add_image(0, "base", 20.145, 20.5)
    sync.add_image(1, "wrist", 20.145, 20.5)
    obs = sync.observation(20.5)
    np.testing.assert_allclose(obs.state, q(20.145), atol=1e-9)
    # A late state (older than the newest) does not become "the newest".
    unsynced = ObservationSync(VIEWS, max_age=0.2, sync_to_images=False)
    unsynced.add_state(q(1.0), 1.0, 1.0)
    unsynced.add_state(q(0.9), 0.9, 1.01)
    unsynced.add_image(0, "b", None, 1.01)
    unsynced.add_image(1, "w", None, 1.01)
    np.testing.assert_allclose(unsynced.observation(1.01).state, q(1.0))


def test_history_keeps_the_last_seconds_only():
    sync = ObservationSync(VIEWS, max_age=0.2)
    feed_states(sync, 0.0, 10.0)
    assert len(sync._stamps) <= STATE_HISTORY_S / 0.01 + 2
    # Frames older than the history (but the same clock) cannot be paired: the newest state, noted.
    sync.add_image(0, "base", 7.0, 10.0)
    sync.add_image(1, "wrist", 7.0, 10.0)
    assert "not stamped on one clock" in sync.observation(10.0).note


def test_max_age_must_be_positive():
    with pytest.raises(ValueError, match="max_age"):
        ObservationSync(VIEWS, max_age=0.0)
