"""Differential IK on the xArm6 kinematics: the Jacobian, tracking of commanded TCP velocities in
free space, joint limits and the velocity bound near the workspace edge (property test), damping at
singularities, refusals."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo1_ros.robot.diffik import (
    DiffIKConfig,
    DifferentialIK,
    jacobian,
    rotation_matrix,
    rotation_vector,
)
from evo1_ros.robot.xarm6 import HOME, JOINT_LOWER, JOINT_UPPER, forward_kinematics
from evo1_ros.runtime.safety import SafetyLimits

CONFIG = DiffIKConfig()
DT = CONFIG.period
# free-space poses: in front of the robot gripper down, home, and a turned, tilted wrist
FREE_SPACE = {
    "work": np.array([0.0, 0.2, -1.0, 0.0, 0.8, 0.0]),
    "home": HOME,
    "turned": np.array([0.5, 0.3, -0.8, 0.4, 1.2, 0.3]),
}
TWISTS = {
    "x": [0.1, 0, 0, 0, 0, 0],
    "y": [0, 0.1, 0, 0, 0, 0],
    "z": [0, 0, -0.1, 0, 0, 0],
    "roll": [0, 0, 0, 0.5, 0, 0],
    "pitch": [0, 0, 0, 0, -0.5, 0],
    "yaw": [0, 0, 0, 0, 0, 0.5],
    "mixed": [0.05, -0.05, 0.05, 0.2, -0.2, 0.3],
}


def measured_twist(q0, q1, dt=DT):
    """The TCP's (linear, angular) velocity in link_base between joint angles q0 and q1."""
    p0, p1 = forward_kinematics(q0).tcp, forward_kinematics(q1).tcp
    return np.concatenate([(p1[:3, 3] - p0[:3, 3]) / dt, rotation_vector(p1[:3, :3] @ p0[:3, :3].T) / dt])


def test_jacobian_matches_finite_differences_of_forward_kinematics():
    q, h = FREE_SPACE["turned"], 1e-6
    jac, pose = jacobian(q)
    np.testing.assert_allclose(pose, forward_kinematics(q).tcp)
    for joint in range(6):
        dq = np.zeros(6)
        dq[joint] = h
        np.testing.assert_allclose(jac[:, joint], measured_twist(q, q + dq, dt=h), atol=1e-5)


def test_rotation_vector_inverts_rotation_matrix():
    for w in ([0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.0, 2.5, 0.0], [1e-8, 0.0, 0.0]):
        np.testing.assert_allclose(rotation_vector(rotation_matrix(np.array(w))), w, atol=1e-9)


@pytest.mark.parametrize("frame", ["base", "tool"])
@pytest.mark.parametrize("twist_name", list(TWISTS))
@pytest.mark.parametrize("pose_name", list(FREE_SPACE))
def test_commanded_tool_velocities_are_tracked_within_5_percent(pose_name, twist_name, frame):
    ik, q, twist = DifferentialIK(), FREE_SPACE[pose_name], np.array(TWISTS[twist_name], dtype=float)
    for _ in range(50):  # one second at 50 Hz
        rotation = forward_kinematics(q).tcp[:3, :3]
        commanded = twist if frame == "base" else np.concatenate([rotation @ twist[:3], rotation @ twist[3:]])
        target = ik.step(q, twist, frame)
        error = np.linalg.norm(measured_twist(q, target) - commanded) / np.linalg.norm(commanded)
        assert error < 0.05, f"step tracked the command within {error:.1%}"
        q = target


def test_translation_goes_straight_and_keeps_the_orientation():
    """A second of +x at 0.1 m/s: 10 cm along x, no drift sideways or in orientation."""
    ik, q0 = DifferentialIK(), FREE_SPACE["work"]
    q = q0
    for _ in range(50):
        q = ik.step(q, [0.1, 0, 0, 0, 0, 0])
    start, end = forward_kinematics(q0).tcp, forward_kinematics(q).tcp
    np.testing.assert_allclose(end[:3, 3] - start[:3, 3], [0.1, 0.0, 0.0], atol=1e-4)
    assert np.linalg.norm(rotation_vector(end[:3, :3] @ start[:3, :3].T)) < 1e-4


def test_zero_twist_holds_the_joints_exactly():
    ik, q = DifferentialIK(), FREE_SPACE["turned"]
    for _ in range(20):
        np.testing.assert_array_equal(ik.step(q, np.zeros(6)), q)


def test_speeds_beyond_the_configured_maximum_are_scaled_down():
    ik, q = DifferentialIK(), FREE_SPACE["work"]
    target = ik.step(q, [5.0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(measured_twist(q, target), [CONFIG.max_linear_speed, 0, 0, 0, 0, 0], atol=5e-3)


def joint_angles_near_the_limits():
    """Each joint uniformly in its margined range, or within 0.1 rad of one end of it."""
    lower, upper = CONFIG.lower, CONFIG.upper

    def joint(i):
        inside = st.floats(float(lower[i]), float(upper[i]))
        near_low = st.floats(float(lower[i]), float(lower[i]) + 0.1)
        near_high = st.floats(float(upper[i]) - 0.1, float(upper[i]))
        return st.one_of(inside, near_low, near_high)

    return st.tuples(*(joint(i) for i in range(6))).map(np.array)


twists = st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6).map(np.array)


@settings(max_examples=150, deadline=None)
@given(q=joint_angles_near_the_limits(), twist=twists, frame=st.sampled_from(["base", "tool"]),
       steps=st.integers(1, 40))
def test_no_command_outside_the_joint_limits_or_over_the_velocity_bound(q, twist, frame, steps):
    ik = DifferentialIK()
    for _ in range(steps):
        target = ik.step(q, twist, frame)
        assert np.isfinite(target).all()
        assert (target >= CONFIG.lower).all() and (target <= CONFIG.upper).all(), target
        assert np.abs(target - q).max() <= CONFIG.max_joint_velocity * DT + 1e-12
        q = target


@settings(max_examples=60, deadline=None)
@given(inside=joint_angles_near_the_limits(), outside=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
       twist=twists)
def test_a_joint_outside_the_margin_never_moves_further_out(inside, outside, twist):
    # put every joint somewhere in the band between the margined limit and the hard limit
    band = CONFIG.joint_limit_margin * np.array(outside)
    q = np.where(inside > 0.5 * (CONFIG.lower + CONFIG.upper), JOINT_UPPER - band, JOINT_LOWER + band)
    target = DifferentialIK().step(q, twist)
    assert (target >= np.minimum(CONFIG.lower, q)).all() and (target <= np.maximum(CONFIG.upper, q)).all()


def test_pushing_past_the_workspace_edge_halts_short_of_the_stretched_singularity_and_comes_back():
    """Reaching far out for 4 s: the arm stops before it is fully stretched (where it could no longer
    be pulled back) and at rest; reversing moves it back at once (the goal did not wind up)."""
    ik, q = DifferentialIK(), FREE_SPACE["work"]
    out = np.array([0.25, 0.0, 0.25, 0, 0, 0])
    for _ in range(200):
        q = ik.step(q, out)
    assert np.linalg.svd(jacobian(q)[0], compute_uv=False)[-1] >= CONFIG.min_singular_value
    np.testing.assert_array_equal(ik.step(q, out), q)
    back = ik.step(q, -out)
    velocity = measured_twist(q, back)[:3]
    assert velocity @ -out[:3] > 0.8 * np.linalg.norm(velocity) * np.linalg.norm(out)  # straight back
    assert np.linalg.norm(velocity) > 0.2 * np.linalg.norm(out)


def test_at_a_singularity_the_joints_stay_bounded():
    q = np.zeros(6)  # straight up: joints 4 and 6 collinear and the elbow stretched
    _, sigma, _ = np.linalg.svd(jacobian(q)[0])
    assert sigma[-1] < 1e-9
    for twist in np.eye(6) * 0.2:
        target = DifferentialIK().step(q, twist)
        assert np.isfinite(target).all() and np.abs(target - q).max() <= CONFIG.max_joint_velocity * DT + 1e-12


def test_default_margin_is_the_drivers():
    assert CONFIG.joint_limit_margin == SafetyLimits().joint_limit_margin


@pytest.mark.parametrize("q, twist, frame, message", [
    (HOME, [0.1, 0, 0], "base", "expected 6 values"),
    (HOME, [np.nan, 0, 0, 0, 0, 0], "base", "must be finite"),
    (HOME[:5], np.zeros(6), "base", "expected 6 values"),
    (HOME, np.zeros(6), "world", "frame must be one of"),
])
def test_wrong_inputs_are_refused_in_words(q, twist, frame, message):
    with pytest.raises(ValueError, match=message):
        DifferentialIK().step(q, twist, frame)


@pytest.mark.parametrize("field, value", [("period", 0.0), ("max_joint_velocity", 5.0), ("joint_limit_margin", -0.1),
                                          ("damping", float("nan")), ("max_linear_speed", 0.0)])
def test_bad_configurations_are_refused(field, value):
    with pytest.raises(ValueError):
        DiffIKConfig(**{field: value})
