"""Recorder node: one rosbag2 episode per demonstration, through `evo1_ros.data.bag`.

Subscribes to the cameras, joint states, commanded trajectories and instruction topics as
serialized messages and, while an episode is active, writes them as they arrive (log time =
this node's clock, so sim time under `use_sim_time`).

Services (std_srvs/Trigger): ~/start, ~/stop_success, ~/stop_fail, ~/discard. Parameters: see
PARAMETERS (`ros2 param describe recorder <name>`); an operator sets `instruction` and
`operator_note` before each ~/start, and the episode keeps them. With `image_transport` compressed
it records `<topic>/compressed` (sensor_msgs/CompressedImage), e.g. cameras on another machine.
"""

from __future__ import annotations

import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from evo1_ros.data import bag
from evo1_ros.nodes.params import Param, declare, not_positive
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot import topics

# Best effort accepts both reliable and best-effort publishers (a reliable subscriber would get
# nothing from a best-effort one); the depth absorbs bursts while the bag is being flushed.
STATE_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.BEST_EFFORT)
# image_transport -> (message class, bag type, topic suffix): raw frames, or image_transport's
# `<topic>/compressed` (JPEG/PNG), e.g. cameras on another machine.
IMAGE_TRANSPORTS = {"raw": (Image, bag.IMAGE_TYPE, ""),
                    "compressed": (CompressedImage, bag.COMPRESSED_IMAGE_TYPE, "/compressed")}

PARAMETERS = {
    "output_dir": Param("episodes", "directory the episode bags are written to (from the next ~/start)",
                        read_when_used=True),
    "cameras": Param(["base", "wrist"], "camera names: /<camera_namespace>/<name>/color/image_raw"),
    "camera_namespace": Param(topics.CAMERA_NAMESPACE, "topic namespace of the cameras (empty: none)"),
    "image_transport": Param("raw", "raw: sensor_msgs/Image; compressed: <topic>/compressed (CompressedImage)"),
    "joint_states_topic": Param(topics.JOINT_STATES, "sensor_msgs/JointState to record"),
    "command_topic": Param(topics.TRAJECTORY, "trajectory_msgs/JointTrajectory (the commands) to record"),
    "instruction_topic": Param(topics.INSTRUCTION, "std_msgs/String to record"),
    "storage": Param("mcap", f"bag storage of the next episode: {' | '.join(bag.STORAGES)}", apply="_set_storage"),
    "flush_period": Param(0.5, "s between flushes to disk: a killed recorder loses at most twice this"),
    "robot": Param("xarm6", "robot name stored with each episode", read_when_used=True),
    "instruction": Param("", "instruction of the next episode (read at ~/start)", read_when_used=True),
    "operator_note": Param("", "note stored with the next episode (read at ~/start and stop)", read_when_used=True),
}


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__("recorder", **kwargs)
        p = declare(self, PARAMETERS)
        if p["storage"] not in bag.STORAGES:
            raise ValueError(f"storage must be one of {list(bag.STORAGES)}, not {p['storage']!r}")
        if reason := not_positive(p["flush_period"]):
            raise ValueError(f"flush_period {reason}")
        if p["image_transport"] not in IMAGE_TRANSPORTS:
            raise ValueError(f"image_transport must be one of {list(IMAGE_TRANSPORTS)}, not {p['image_transport']!r}")
        image_cls, image_type, suffix = IMAGE_TRANSPORTS[p["image_transport"]]
        self.cameras = list(p["cameras"])
        self.layout = {
            "cameras": {name: topics.camera_topic(name, p["camera_namespace"]) + suffix for name in self.cameras},
            "joint_states": p["joint_states_topic"],
            "command": p["command_topic"],
            "instruction": p["instruction_topic"],
        }
        self.storage, self.flush_period = p["storage"], p["flush_period"]

        subscriptions = [(topic, image_cls, image_type, qos_profile_sensor_data)
                         for topic in self.layout["cameras"].values()]
        subscriptions += [
            (self.layout["joint_states"], JointState, bag.JOINT_STATE_TYPE, STATE_QOS),
            (self.layout["command"], JointTrajectory, bag.TRAJECTORY_TYPE, STATE_QOS),
            (self.layout["instruction"], String, bag.STRING_TYPE, STATE_QOS),
        ]
        self.topics = {topic: msgtype for topic, _, msgtype, _ in subscriptions}
        for topic, cls, _, qos in subscriptions:
            self.create_subscription(cls, topic, lambda raw, t=topic: self._on_message(t, raw),
                                     qos, raw=True)
        self.writer: bag.EpisodeWriter | None = None
        # With write()'s own check, data reaches the disk within 2 x flush_period, idle or not.
        self.create_timer(self.flush_period, self._poll)
        for name, handler in [("start", self._start), ("stop_success", self._stop_success),
                              ("stop_fail", self._stop_fail), ("discard", self._discard)]:
            self.create_service(Trigger, f"~/{name}", handler)

    def _set_storage(self, value: str) -> str | None:
        if value not in bag.STORAGES:
            return f"one of {list(bag.STORAGES)}, not {value!r}"
        self.storage = value
        return None

    def _on_message(self, topic: str, raw: bytes) -> None:
        if self.writer is not None:
            self.writer.write(topic, self.get_clock().now().nanoseconds, raw)

    def _poll(self) -> None:
        if self.writer is not None:
            self.writer.poll()

    def start(self) -> Path:
        if self.writer is not None:
            raise RuntimeError(f"episode {self.writer.path.name} is still recording")
        path = Path(self.get_parameter("output_dir").value).expanduser() / time.strftime("episode_%Y%m%d_%H%M%S")
        while path.exists():
            path = path.with_name(path.name + "_")  # several episodes within one second
        meta = {
            "instruction": self.get_parameter("instruction").value,
            "operator_note": self.get_parameter("operator_note").value,
            "robot": self.get_parameter("robot").value,
            "cameras": self.cameras,
            "topics": self.layout,
        }
        self.writer = bag.EpisodeWriter(path, self.topics, meta, self.storage, self.flush_period)
        return path

    def stop(self, success: bool | None) -> Path:
        if self.writer is None:
            raise RuntimeError("no episode is recording")
        writer, self.writer = self.writer, None
        return writer.close(success, self.get_parameter("operator_note").value)

    def destroy_node(self):
        if self.writer is not None:  # interrupted mid-episode: keep it, outcome unknown
            self.stop(None)
        return super().destroy_node()

    def discard(self) -> Path:
        if self.writer is None:
            raise RuntimeError("no episode is recording")
        writer, self.writer = self.writer, None
        writer.discard()
        return writer.path

    def _respond(self, response, action, verb: str):
        try:
            path = action()
        except (RuntimeError, OSError) as exc:
            response.success, response.message = False, str(exc)
        else:
            response.success, response.message = True, f"{verb} {path}"
        self.get_logger().info(response.message)
        return response

    def _start(self, _request, response):
        return self._respond(response, self.start, "recording")

    def _stop_success(self, _request, response):
        return self._respond(response, lambda: self.stop(True), "saved (success)")

    def _stop_fail(self, _request, response):
        return self._respond(response, lambda: self.stop(False), "saved (failure)")

    def _discard(self, _request, response):
        return self._respond(response, self.discard, "discarded")


def main(args=None) -> None:
    raise SystemExit(run_nodes(lambda: [RecorderNode()], "recorder", args))

if __name__ == "__main__":
    main()
