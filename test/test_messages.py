"""Image and JointState conversions shared by the nodes (evo1_ros.nodes.messages)."""

import math

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from sensor_msgs.msg import Image, JointState  # noqa: E402

from evo1_ros.nodes.messages import (  # noqa: E402
    MessageError, array_to_image, image_to_rgb, joint_positions, stamp_seconds, to_duration, to_time)

pytestmark = pytest.mark.ros


def test_rgb_and_bgr_images_decode_to_rgb():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(rgb, "rgb8")), rgb)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(rgb[..., ::-1], "bgr8")), rgb)


def test_padded_rows_are_accepted_and_stripped():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.concatenate([rgb.reshape(2, 9), np.full((2, 3), 255, np.uint8)], axis=1)
    msg = Image(height=2, width=3, encoding="rgb8", step=12, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("field, value, words", [
    ("encoding", "mono8", "encoding 'mono8'"),
    ("step", 20, "step 20 is less than"),
    ("data", bytes(10), "data has 10 bytes"),
    ("width", 0, "empty image"),
])
def test_malformed_images_raise_a_message_error_that_says_why(field, value, words):
    msg = array_to_image(np.zeros((4, 8, 3), np.uint8), "bgr8")
    setattr(msg, field, value)
    with pytest.raises(MessageError, match=words):
        image_to_rgb(msg)


def test_joint_positions_reorders_by_name_and_rejects_missing_or_bad_joints():
    msg = JointState(name=["b", "c", "a"], position=[2.0, 3.0, 1.0])
    np.testing.assert_array_equal(joint_positions(msg, ["a", "b", "c"]), [1.0, 2.0, 3.0])
    with pytest.raises(MessageError, match=r"lacks \['d'\]"):
        joint_positions(msg, ["a", "d"])
    with pytest.raises(MessageError, match="3 names but 2 positions"):
        joint_positions(JointState(name=["a", "b", "c"], position=[1.0, 2.0]), ["a"])
    with pytest.raises(MessageError, match="non-finite"):
        joint_positions(JointState(name=["a"], position=[math.nan]), ["a"])


def test_time_conversions_round_trip():
    for seconds in (0.0, 1.5, 1763856000.123456):
        assert abs(stamp_seconds(to_time(seconds)) - seconds) < 1e-6
    d = to_duration(0.0333333)
    assert (d.sec, d.nanosec) == (0, 33333300)
