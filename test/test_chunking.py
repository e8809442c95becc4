"""Properties of chunk alignment and blending (evo1_ros.runtime.chunking, no ROS)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evo1_ros.runtime.chunking import MODES, ChunkScheduler, Plan, RTCConfig, align, merge

DT = 1.0 / 30.0
finite = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


def chunks(h=st.integers(2, 40), d=st.integers(1, 7)):
    return st.tuples(h, d).flatmap(lambda hd: arrays(np.float64, hd, elements=finite))


@given(chunk=chunks(), obs_time=st.floats(0.0, 100.0), elapsed=st.integers(0, 60), frac=st.floats(0.01, 0.99))
def test_align_drops_exactly_the_elapsed_steps(chunk, obs_time, elapsed, frac):
    # `now` lies strictly between two steps, so exactly `elapsed + 1` steps (0..elapsed) are due.
    now = obs_time + (elapsed + frac) * DT
    times, actions = align(chunk, obs_time, now, DT)
    dropped = min(elapsed + 1, len(chunk))
    assert len(times) == len(chunk) - dropped
    np.testing.assert_array_equal(actions, chunk[dropped:])
    np.testing.assert_allclose(times, obs_time + DT * np.arange(dropped, len(chunk)))
    assert (times > now).all()


def plan_from(chunk, t0):
    return Plan(t0 + DT * np.arange(len(chunk)), chunk, np.ones(len(chunk), dtype=int))


@settings(max_examples=200)
@given(old=chunks(d=st.just(3)), new=chunks(d=st.just(3)), shift=st.floats(0.0, 30.0), mode=st.sampled_from(MODES))
def test_blend_stays_in_the_convex_hull_of_its_inputs(old, new, shift, mode):
    # Per dimension, every merged action lies between the smallest and largest input value.
    plan = merge(plan_from(old, 0.0), shift * DT + DT * np.arange(len(new)), new, mode)
    lo = np.minimum(old.min(0), new.min(0)) - 1e-9
    hi = np.maximum(old.max(0), new.max(0)) + 1e-9
    assert ((plan.actions >= lo) & (plan.actions <= hi)).all()
    assert len(plan.actions) == len(new)


@given(a=arrays(np.float64, 4, elements=finite), b=arrays(np.float64, 4, elements=finite),
       h=st.integers(5, 40), obs_a=st.floats(0.0, 10.0), lag=st.floats(0.0, 1.0), latency=st.floats(0.0, 0.99),
       mode=st.sampled_from(MODES))
def test_chunks_of_one_trajectory_merge_into_that_trajectory(a, b, h, obs_a, lag, latency, mode):
    # Two predictions of the same linear motion q(t) = a + b t, made at different times and on
    # different time grids, must merge into q(t) itself: any misalignment in time would show.
    q = lambda t: a + np.outer(t, b)  # noqa: E731
    obs_b = obs_a + lag
    first = q(obs_a + DT * np.arange(h))
    second = q(obs_b + DT * np.arange(h))
    sched = ChunkScheduler(DT, h, mode, rtc=RTCConfig(execution_horizon=1))
    sched.add_chunk(first, obs_a, obs_a)
    now = obs_b + latency * (h - 1) * DT  # the second chunk arrives with steps still ahead
    sched.rtc_inputs(obs_b)  # rtc: the steps due before it lands keep the first chunk's actions
    sched.add_chunk(second, obs_b, now)
    times, actions = sched.window(now)
    assert len(times) > 0 and (times > now).all()
    np.testing.assert_allclose(actions, q(times), atol=1e-5)  # merge treats grids 1 us apart as meeting


@given(old=chunks(d=st.just(2)), new=chunks(d=st.just(2)), shift=st.integers(1, 39))
def test_crossfade_has_no_jump_at_either_seam(old, new, shift):
    # Each step of the merged motion (including from the old plan's last executed step into the
    # blend, and out of the blend into the new chunk) moves at most as far as the inputs' own steps
    # plus 1/(L+1) of the widest gap between the two chunks, L the overlap length.
    if shift >= len(old):
        shift = len(old) - 1
    old_plan = plan_from(old, 0.0)
    times = shift * DT + DT * np.arange(len(new))
    plan = merge(old_plan, times, new, "crossfade")
    overlap = min(len(old) - shift, len(new))
    gap = np.abs(old[shift:shift + overlap] - new[:overlap]).max(0)
    step = np.maximum(np.abs(np.diff(old, axis=0)).max(0, initial=0), np.abs(np.diff(new, axis=0)).max(0, initial=0))
    motion = np.concatenate([old[shift - 1:shift], plan.actions])  # last executed old step, then the plan
    assert (np.abs(np.diff(motion, axis=0)) <= step + gap / (overlap + 1) + 1e-9).all()


def test_open_loop_replaces_and_temporal_ensemble_weights_older_predictions_more():
    old = np.zeros((10, 1))
    new = np.ones((10, 1))
    times = 5 * DT + DT * np.arange(10)
    assert (merge(plan_from(old, 0.0), times, new, "open_loop").actions == 1.0).all()
    plan = merge(plan_from(old, 0.0), times, new, "temporal_ensemble", decay=0.5)
    w_old, w_new = 1.0, np.exp(-0.5)  # ACT: w_i = exp(-m i), i = 0 the oldest prediction
    np.testing.assert_allclose(plan.actions[:5, 0], w_new / (w_old + w_new))
    np.testing.assert_allclose(plan.actions[5:, 0], 1.0)  # no old prediction for these steps
    np.testing.assert_array_equal(plan.counts, [2] * 5 + [1] * 5)
    # A third prediction for the same steps gets weight exp(-2m) against exp(0) + exp(-m).
    third = merge(plan, times, 2 * np.ones((10, 1)), "temporal_ensemble", decay=0.5)
    expected = (w_old * 0 + w_new * 1 + np.exp(-1.0) * 2) / (w_old + w_new + np.exp(-1.0))
    np.testing.assert_allclose(third.actions[:5, 0], expected)


def test_requests_below_the_threshold_and_ignores_late_chunks():
    sched = ChunkScheduler(DT, 10, "crossfade", request_threshold=0.5)
    assert sched.should_request(0.0)  # nothing planned yet
    assert sched.add_chunk(np.zeros((10, 2)), obs_time=0.0, now=0.0) == 9  # step 0 is due now
    assert not sched.should_request(0.01)
    assert sched.remaining(3.5 * DT) == 6 and not sched.should_request(3.5 * DT)
    assert sched.remaining(4.5 * DT) == 5 and sched.should_request(4.5 * DT)
    assert sched.add_chunk(np.ones((10, 2)), obs_time=0.0, now=20 * DT) == 0  # all steps past
    assert sched.window(20 * DT)[0].size == 0
    with pytest.raises(ValueError, match="chunk mode"):
        ChunkScheduler(DT, 10, "blend")


def linear_plan(sched, obs_time, now, a, b):
    """Merge a chunk of the motion q(t) = a + b t predicted at obs_time; return q."""
    q = lambda t: a + np.outer(t, b)  # noqa: E731
    sched.add_chunk(q(obs_time + DT * np.arange(sched.chunk_length)), obs_time, now)
    return q


def test_rtc_asks_for_a_chunk_every_execution_horizon_with_the_plan_it_will_replace():
    sched = ChunkScheduler(DT, 16, "rtc", rtc=RTCConfig(execution_horizon=5))
    assert sched.should_request(0.0) and sched.rtc_inputs(0.0) is None  # nothing planned: a plain chunk
    q = linear_plan(sched, 0.0, 0.1 * DT, np.array([0.5, -1.0]), np.array([2.0, 1.0]))
    assert not sched.should_request(4.9 * DT)
    assert sched.should_request(5.0 * DT)  # 5 of its steps have passed since its observation
    # The next observation is 5.3 steps after the first: the prefix is the plan on the new chunk's
    # grid, as far as the plan reaches (step 15 of the first chunk, 15 - 5.3 = 9.7 steps later).
    rtc = sched.rtc_inputs(5.3 * DT)
    assert rtc.config.execution_horizon == 5 and rtc.prefix.shape == (10, 2)
    np.testing.assert_allclose(rtc.prefix, q(5.3 * DT + DT * np.arange(10)))
    # Outside rtc mode there are no RTC inputs.
    other = ChunkScheduler(DT, 16, "open_loop")
    linear_plan(other, 0.0, 0.0, np.zeros(2), np.ones(2))
    assert other.rtc_inputs(5 * DT) is None


def test_rtc_delay_is_a_high_percentile_of_recent_delays_in_steps():
    sched = ChunkScheduler(DT, 16, "rtc", rtc=RTCConfig(delay_percentile=95.0, delay_window=10))
    assert sched.delay() is None and sched.delay_steps() == 0
    delays = [2.0] + [0.05] * 9 + [0.1] * 10  # s: a warm-up, then two regimes
    t = 0.0
    for i, delay in enumerate(delays):
        linear_plan(sched, t, t + delay, np.zeros(1), np.ones(1))
        if i == 0:  # alone, the first chunk's delay is all there is
            assert sched.delay() == 2.0 and sched.delay_steps() == 16  # capped at the chunk
        if i == 1:  # then it is left out: it holds the warm-up (allocation, graph capture)
            assert sched.delay() == pytest.approx(0.05) and sched.delay_steps() == 2
        t += 1.0
    # The warm-up is left out and the window holds the last 10, all 0.1 s: the steps due at 0, 1, 2
    # and 3 x 1/30 s have passed when such a chunk lands, so 4 are committed.
    assert sched.delay() == pytest.approx(0.1) and sched.delay_steps() == 4
    # A high percentile, not the mean (0.12 s, 4 steps): one slow chunk in ten moves it to 0.21 s.
    linear_plan(sched, t, t + 0.3, np.zeros(1), np.ones(1))
    assert sched.delay() == pytest.approx(0.1 + 0.55 * 0.2) and sched.delay_steps() == 7
    linear_plan(sched, t + 1, t + 1.3, np.zeros(1), np.ones(1))
    assert sched.delay() == pytest.approx(0.3) and sched.delay_steps() == 10
    # A chunk that lands too late to be used still counts: d must grow to cover such delays.
    assert sched.add_chunk(np.zeros((16, 1)), t + 2, t + 3) == 0
    assert sched.delay() == pytest.approx(0.3 + 0.55 * 0.7)
    sched.reset()  # a pause drops the plan, not what was learnt about the machine
    assert sched.delay_steps() == 16


def test_rtc_merge_keeps_the_committed_steps_of_the_old_plan():
    sched = ChunkScheduler(DT, 16, "rtc", rtc=RTCConfig(execution_horizon=6))
    sched.add_chunk(np.zeros((16, 2)), 0.0, 0.0)
    sched._delays.extend([4.5 * DT] * 3)  # d = 5: steps 0..4 of the next chunk are committed
    rtc = sched.rtc_inputs(6 * DT)
    assert rtc.delay == 5
    # It lands 2.5 steps after its observation: steps 0..2 have passed, 3 and 4 are committed and
    # keep the old plan's actions, the new chunk takes over from step 5.
    assert sched.add_chunk(np.ones((16, 2)), 6 * DT, 8.5 * DT) == 13
    times, actions = sched.window(8.5 * DT)
    np.testing.assert_allclose(times, 6 * DT + DT * np.arange(3, 16))
    np.testing.assert_array_equal(actions[:, 0], [0, 0] + [1] * 11)
    # A chunk of another observation than the one asked for commits nothing.
    sched.rtc_inputs(12 * DT)
    sched.add_chunk(2 * np.ones((16, 2)), 13 * DT, 14 * DT)
    assert (sched.window(14 * DT)[1] == 2).all()


def test_rtc_settings_that_cannot_work_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="execution_horizon 20 is longer than the chunk"):
        ChunkScheduler(DT, 16, "rtc", rtc=RTCConfig(execution_horizon=20))
    ChunkScheduler(DT, 4, "crossfade")  # the rtc defaults do not bind the other modes
    for bad, match in [(dict(execution_horizon=0), "execution_horizon"), (dict(execution_horizon=2.5), "whole"),
                       (dict(max_guidance_weight=-1.0), "max_guidance_weight"),
                       (dict(max_guidance_weight=float("nan")), "max_guidance_weight"),
                       (dict(schedule="cosine"), "unknown RTC schedule 'cosine'"),
                       (dict(delay_percentile=0.0), "delay_percentile"), (dict(delay_window=0), "delay_window")]:
        with pytest.raises(ValueError, match=match):
            RTCConfig(**bad)
