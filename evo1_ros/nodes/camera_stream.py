"""One camera's topics as realsense2_camera publishes them: `/<namespace>/<name>/color/image_raw`
and `.../camera_info`, stamped alike; the RealSense camera node and the sim node both publish
through `CameraStream`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from evo1_ros.nodes.messages import array_to_image
from evo1_ros.robot.topics import camera_frame, camera_topic

# Reliable keep-last: rviz and rosbag subscribe reliably, and sensor-data (best-effort) subscribers
# such as the inference node accept a reliable publisher too.
CAMERA_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    distortion_model: str  # ROS name: plumb_bob or equidistant
    coeffs: tuple[float, ...]


def camera_info(intrinsics: Intrinsics, frame_id: str = "") -> CameraInfo:
    i = intrinsics
    info = CameraInfo(width=i.width, height=i.height, distortion_model=i.distortion_model, d=list(i.coeffs),
                      k=[i.fx, 0.0, i.ppx, 0.0, i.fy, i.ppy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[i.fx, 0.0, i.ppx, 0.0, 0.0, i.fy, i.ppy, 0.0, 0.0, 0.0, 1.0, 0.0])
    info.header.frame_id = frame_id
    return info


class CameraStream:
    """The image and camera_info publishers of camera `name` on `node`."""

    def __init__(self, node: Node, name: str, namespace: str, intrinsics: Intrinsics):
        self.name = name
        self.topic = camera_topic(name, namespace)
        self._info = camera_info(intrinsics, camera_frame(name))
        self._image_pub = node.create_publisher(Image, self.topic, CAMERA_QOS)
        self._info_pub = node.create_publisher(CameraInfo, camera_topic(name, namespace, "camera_info"), CAMERA_QOS)

    def publish(self, pixels: np.ndarray, encoding: str, stamp: Time) -> None:
        """One frame, (H, W, 3) uint8 in `encoding`'s channel order (rgb8 or bgr8), and its camera_info."""
        self._image_pub.publish(array_to_image(pixels, encoding, stamp, self._info.header.frame_id))
        self._info.header.stamp = stamp
        self._info_pub.publish(self._info)
