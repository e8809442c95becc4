"""Camera node: RealSense color streams as realsense2_camera-style topics.

One pipeline per serial; each camera publishes `/<camera_namespace>/<name>/color/image_raw` and
`.../color/camera_info`, so switching to or from realsense2_camera changes topic names at most.
The pyrealsense2 part sits behind `RealSenseColor`, so the node runs with any class that opens
a camera the same way (tests use a synthetic one).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter

from evo1_ros.nodes.camera_stream import CameraStream, Intrinsics
from evo1_ros.nodes.messages import to_time
from evo1_ros.nodes.params import Param, declare, not_positive
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot.topics import CAMERA_NAMESPACE

PARAMETERS = {
    # No default serials (there is no sensible one), so the type is declared instead.
    "serials": Param(Parameter.Type.STRING_ARRAY, "RealSense serial numbers, one per name; a leading _ "
                                                  "(realsense2_camera's serial_no:=_<sn>) is dropped"),
    "names": Param(["base", "wrist"], "camera names in view-slot order, one per serial: "
                                      "/<camera_namespace>/<name>/color/image_raw"),
    "camera_namespace": Param(CAMERA_NAMESPACE, "topic namespace of the cameras (empty: none)"),
    "width": Param(640, "color stream width, px"),
    "height": Param(480, "color stream height, px"),
    "fps": Param(30, "color stream frame rate, Hz"),
    "timeout_ms": Param(1000, "a frame not here after this long is reported, then waited for again",
                        apply="_set_timeout"),
}


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


class CameraNode(Node):
    def __init__(self, open_camera: Callable[[str, int, int, int], RealSenseColor] = RealSenseColor, **node_kwargs):
        super().__init__("evo1_camera", **node_kwargs)
        p = declare(self, PARAMETERS)
        self.timeout_ms = p["timeout_ms"]
        # realsense2_camera users write serial_no:=_<sn> so YAML keeps it a string; accept that form.
        serials = [s[1:] if s.startswith("_") else s for s in p["serials"] or []]
        names, width, height, fps = p["names"], p["width"], p["height"], p["fps"]
        if not serials:
            raise ValueError("parameter 'serials' is empty: list the RealSense serial numbers (e.g. ['_123456789012'])")
        if len(serials) != len(names):
            raise ValueError(f"need one name per serial; got serials {serials} and names {names}")

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
            stream = CameraStream(self, name, p["camera_namespace"], camera.intrinsics)
            self._cameras.append((camera, stream))
            self.get_logger().info(f"camera {serial} -> {stream.topic} ({width}x{height} @ {fps} Hz)")
        self._stop = threading.Event()
        # One thread per camera: wait_for_frames blocks, and each stream keeps its own pace.
        self._threads = [threading.Thread(target=self._stream, args=entry, daemon=True) for entry in self._cameras]
        for thread in self._threads:
            thread.start()

    def _set_timeout(self, value: int) -> str | None:
        if reason := not_positive(value):
            return reason
        self.timeout_ms = value
        return None

    def _stream(self, camera: RealSenseColor, stream: CameraStream) -> None:
        last_complaint = 0.0
        while not self._stop.is_set():
            try:
                frame = camera.read(self.timeout_ms)
            except RuntimeError as e:  # frame timeout or a USB hiccup: report and keep trying
                if time.monotonic() - last_complaint > 2.0:
                    last_complaint = time.monotonic()
                    self.get_logger().warn(f"camera {stream.name}: {e}")
                continue
            stream.publish(frame, "bgr8", to_time(self.get_clock().now().nanoseconds * 1e-9))

    def destroy_node(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for camera, _ in self._cameras:
            camera.close()
        return super().destroy_node()


def main(args=None):
    raise SystemExit(run_nodes(lambda: [CameraNode()], "evo1_camera", args))

if __name__ == "__main__":
    main()
