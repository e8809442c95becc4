"""CameraNode: realsense2_camera-style topics from any color source; missing serials fail clearly."""

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from evo1_ros.nodes.camera import CameraNode, Intrinsics, RealSenseColor  # noqa: E402
from evo1_ros.nodes.messages import image_to_rgb  # noqa: E402

pytestmark = pytest.mark.ros


class FakeColor:
    """Stands in for RealSenseColor: frames whose pixels encode the serial and a frame counter.
    The first read times out, as wait_for_frames does while a camera warms up."""

    def __init__(self, serial, width, height, fps):
        self.serial, self.period, self.count, self.closed = serial, 1.0 / fps, 0, False
        self.intrinsics = Intrinsics(width, height, 600.0, 601.0, width / 2, height / 2, "plumb_bob", (0.1, 0, 0, 0, 0))

    def read(self, timeout_ms):
        time.sleep(self.period)
        self.count += 1
        if self.count == 1:
            raise RuntimeError("Frame didn't arrive within 1000")
        frame = np.zeros((self.intrinsics.height, self.intrinsics.width, 3), np.uint8)
        frame[..., 0] = int(self.serial) % 256  # blue in BGR
        frame[..., 2] = self.count % 256  # red
        return frame

    def close(self):
        self.closed = True


def with_context(fn):
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        return fn(context)
    finally:
        rclpy.shutdown(context=context)


def test_missing_serial_names_it_and_lists_connected_devices():
    pytest.importorskip("pyrealsense2")  # needs libusb-1.0 (apt-get install libusb-1.0-0)
    with pytest.raises(RuntimeError, match=r"RealSense serial '123456789012' is not connected; connected devices: "):
        RealSenseColor("123456789012", 640, 480, 30)

    def start(context):  # the node passes serial_no-style "_<sn>" on as the bare serial
        with pytest.raises(RuntimeError, match="'123456789012' is not connected"):
            CameraNode(context=context, parameter_overrides=[Parameter("serials", value=["_123456789012"]),
                                                             Parameter("names", value=["base"])])
    with_context(start)


def test_publishes_image_and_camera_info_per_camera_on_realsense_names(capfd):
    def run(context):
        node = CameraNode(open_camera=FakeColor, context=context, parameter_overrides=[
            Parameter("serials", value=["_7", "8"]), Parameter("names", value=["base", "wrist"]),
            Parameter("width", value=32), Parameter("height", value=24), Parameter("fps", value=30)])
        io = rclpy.create_node("listener", context=context)
        got = {}
        for name in ("base", "wrist"):
            for kind, typ in (("image_raw", Image), ("camera_info", CameraInfo)):
                topic = f"/camera/{name}/color/{kind}"
                got[topic] = []
                # best effort, as the inference node subscribes: must accept the node's reliable publisher
                io.create_subscription(typ, topic, lambda m, t=topic: got[t].append(m), qos_profile_sensor_data)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(io)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        time.sleep(1.0)
        cameras = [entry[0] for entry in node._cameras]
        executor.shutdown()
        node.destroy_node()
        io.destroy_node()
        return got, cameras

    got, cameras = with_context(run)
    assert all(camera.closed for camera in cameras)
    for name, serial in (("base", 7), ("wrist", 8)):
        images, infos = got[f"/camera/{name}/color/image_raw"], got[f"/camera/{name}/color/camera_info"]
        assert len(images) >= 10 and len(infos) >= 10
        image, info = images[-1], infos[-1]
        assert image.encoding == "bgr8" and (image.width, image.height) == (32, 24)
        assert image.header.frame_id == info.header.frame_id == f"{name}_color_optical_frame"
        rgb = image_to_rgb(image)
        assert rgb[0, 0, 2] == serial and rgb[0, 0, 0] > 1  # BGR on the wire, RGB decoded; frames advance
        assert list(info.k) == [600.0, 0.0, 16.0, 0.0, 601.0, 12.0, 0.0, 0.0, 1.0]
        assert info.distortion_model == "plumb_bob" and info.d[0] == pytest.approx(0.1)
        assert any(i.header.stamp == image.header.stamp for i in infos)
    assert "Frame didn't arrive" in capfd.readouterr().err  # a timeout is reported, the stream goes on
