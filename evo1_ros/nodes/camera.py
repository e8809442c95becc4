"""Camera node: RealSense color streams as realsense2_camera-style topics.

One pipeline per serial; each camera publishes `/<camera_namespace>/<name>/color/image_raw` and
`.../color/camera_info`, so switching to or from realsense2_camera changes topic names at most.
The pyrealsense2 part sits behind `RealSenseColor`, so the node runs with any class that opens
a camera the same way (tests use a synthetic one).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from evo1_ros.nodes.messages import array_to_image, to_time
from evo1_ros.nodes.spin import run_nodes


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


class RealSenseColor:
    """The color stream of one RealSense device, opened by serial number."""

    def __init__(self, serial: str, width: int, height: int, fps: int):
        import pyrealsense2 as rs  # only the real camera needs librealsense

        context = rs.context()
        connected = {d.get_info(rs.camera_info.serial_number): d.get_info(rs.camera_info.name)
                     for d in context.query_devices()}
        if serial not in connected:
            listing = ", ".join(f"{sn} ({name})" for sn, name in connected.items()) or "none"
            raise RuntimeError(f"RealSense serial {serial!r} is not connected; connected devices: {listing}")
        self._pipeline = rs.pipeline(context)
        config = rs.config()
        config.enable_device(serial)
        config.enable_stream(rs.stream.color, width, height, rs.format.bgr8, fps)
        profile = self._pipeline.start(config)
        i = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        # realsense2_camera's convention: Kannala-Brandt is ROS "equidistant", the Brown-Conrady family "plumb_bob".
        model = "equidistant" if i.model == rs.distortion.kannala_brandt4 else "plumb_bob"
        self.intrinsics = Intrinsics(i.width, i.height, i.fx, i.fy, i.ppx, i.ppy, model, tuple(i.coeffs))

    def read(self, timeout_ms: int) -> np.ndarray:
        """Next (height, width, 3) BGR frame; raises RuntimeError on timeout."""
        frames = self._pipeline.wait_for_frames(timeout_ms)
        return np.asanyarray(frames.get_color_frame().get_data())

    def close(self) -> None:
        self._pipeline.stop()


def camera_info(intrinsics: Intrinsics) -> CameraInfo:
    i = intrinsics
    return CameraInfo(width=i.width, height=i.height, distortion_model=i.distortion_model, d=list(i.coeffs),
                      k=[i.fx, 0.0, i.ppx, 0.0, i.fy, i.ppy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[i.fx, 0.0, i.ppx, 0.0, 0.0, i.fy, i.ppy, 0.0, 0.0, 0.0, 1.0, 0.0])


class CameraNode(Node):
    def __init__(self, open_camera: Callable[[str, int, int, int], RealSenseColor] = RealSenseColor, **node_kwargs):
        super().__init__("evo1_camera", **node_kwargs)
        # No default serials (there is no sensible one), so the type is declared instead of inferred.
        serials = self.declare_parameter("serials", Parameter.Type.STRING_ARRAY).value or []
        names = self.declare_parameter("names", ["base", "wrist"]).value
        namespace = self.declare_parameter("camera_namespace", "camera").value
        width = self.declare_parameter("width", 640).value
        height = self.declare_parameter("height", 480).value
        fps = self.declare_parameter("fps", 30).value
        self.timeout_ms = self.declare_parameter("timeout_ms", 1000).value
        # realsense2_camera users write serial_no:=_<sn> so YAML keeps it a string; accept that form.
        serials = [s[1:] if s.startswith("_") else s for s in serials]
        if not serials:
            raise ValueError("parameter 'serials' is empty: list the RealSense serial numbers (e.g. ['_123456789012'])")
        if len(serials) != len(names):
            raise ValueError(f"need one name per serial; got serials {serials} and names {names}")

        # Reliable keep-last: rviz and rosbag subscribe reliably, and sensor-data (best-effort)
        # subscribers such as the inference node accept a reliable publisher too.
        qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        opened = []
        try:
            for serial in serials:
                opened.append(open_camera(serial, width, height, fps))
        except Exception:  # close what did open, so a retry finds those devices free
            for camera in opened:
                camera.close()
            raise
        self._cameras = []
        for camera, serial, name in zip(opened, serials, names):
            topic = f"/{namespace}/{name}/color" if namespace else f"/{name}/color"
            info = camera_info(camera.intrinsics)
            info.header.frame_id = f"{name}_color_optical_frame"
            image_pub = self.create_publisher(Image, f"{topic}/image_raw", qos)
            info_pub = self.create_publisher(CameraInfo, f"{topic}/camera_info", qos)
            self._cameras.append((camera, name, info, image_pub, info_pub))
            self.get_logger().info(f"camera {serial} -> {topic}/image_raw ({width}x{height} @ {fps} Hz)")
        self._stop = threading.Event()
        # One thread per camera: wait_for_frames blocks, and each stream keeps its own pace.
        self._threads = [threading.Thread(target=self._stream, args=entry, daemon=True) for entry in self._cameras]
        for thread in self._threads:
            thread.start()

    def _stream(self, camera, name, info, image_pub, info_pub) -> None:
        last_complaint = 0.0
        while not self._stop.is_set():
            try:
                frame = camera.read(self.timeout_ms)
            except RuntimeError as e:  # frame timeout or a USB hiccup: report and keep trying
                if time.monotonic() - last_complaint > 2.0:
                    last_complaint = time.monotonic()
                    self.get_logger().warn(f"camera {name}: {e}")
                continue
            stamp = to_time(self.get_clock().now().nanoseconds * 1e-9)
            image = array_to_image(frame, "bgr8", stamp, info.header.frame_id)
            info.header.stamp = stamp
            image_pub.publish(image)
            info_pub.publish(info)

    def destroy_node(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for camera, *_ in self._cameras:
            camera.close()
        return super().destroy_node()


def main(args=None):
    raise SystemExit(run_nodes(lambda: [CameraNode()], "evo1_camera", args))

if __name__ == "__main__":
    main()
