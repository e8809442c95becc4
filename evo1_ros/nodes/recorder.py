"""Recorder node: one rosbag2 episode per demonstration, through `evo1_ros.data.bag`.

Subscribes to the cameras, joint states, commanded trajectories, instruction and intervention
topics as serialized messages and, while an episode is active, writes them as they arrive (log
time = this node's clock, so sim time under `use_sim_time`).

Episodes (std_srvs/Trigger services, named as the teleop devices' episode events,
`evo1_ros.teleop.device.EPISODE_EVENTS`): `~/start`; `~/stop` ends the episode and keeps it,
outcome not marked; `~/success` and `~/failure` end it, keep it and mark it so; `~/discard` ends
it and deletes it. Every answer, and the log, carries the session's running count. An operator
that cuts an episode short (a teleop device failed) sets `interruption` to why, then calls
`~/stop`: the episode is kept, marked interrupted (convert skips it unless asked).

Each episode's metadata (episode.json, and metadata.yaml's custom data) is what the parameters
say at `~/start` (instruction, task, operator, teleop source, scene and seed in sim, camera
serials, robot; see PARAMETERS, `ros2 param describe recorder <name>`): an operator node sets
them before each start, and a user calling `~/start` directly sets them with `ros2 param set`.
With `image_transport` compressed it records `<topic>/compressed` (sensor_msgs/CompressedImage),
e.g. cameras on another machine.
"""

from __future__ import annotations

import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from evo1_ros.data import bag
from evo1_ros.nodes.params import Param, declare, not_positive
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot import topics
from evo1_ros.teleop.device import EPISODE_EVENTS

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
    "intervention_topic": Param(topics.INTERVENTION, "std_msgs/Bool to record: true while an operator "
                                                     "overrides the policy"),
    "storage": Param("mcap", f"bag storage of the next episode: {' | '.join(bag.STORAGES)}", apply="_set_storage"),
    "flush_period": Param(0.5, "s between flushes to disk: a killed recorder loses at most twice this"),
    # the next episode's metadata, read at ~/start (operator_note and interruption also at the end)
    "robot": Param("xarm6", "robot name stored with each episode", read_when_used=True),
    "instruction": Param("", "instruction of the next episode", read_when_used=True),
    "task": Param("", "task name of the next episode (e.g. pick_place_can)", read_when_used=True),
    "operator": Param("", "who records the next episode", read_when_used=True),
    "teleop_source": Param("", "how the next episode is driven (keyboard, leader, spacemouse, joy, twist, "
                               "teaching, sim_expert, policy)", read_when_used=True),
    "scene": Param("", "sim: scene of the next episode (empty: not sim)", read_when_used=True),
    "seed": Param(-1, "sim: seed of the next episode (-1: not sim)", read_when_used=True),
    "camera_serials": Param("", "camera serial numbers, name:serial,... (e.g. base:123456789012)",
                            apply="_set_camera_serials"),
    "operator_note": Param("", "note stored with the next episode (read at ~/start and at the end)",
                           read_when_used=True),
    "interruption": Param("", "why the running episode is cut short, set just before ~/stop (e.g. a device "
                              "failed); cleared at each start and end", read_when_used=True),
}


def parse_camera_serials(text: str, cameras: list[str]) -> dict[str, str]:
    """{camera: serial} of "name:serial,..."; ValueError in words for a malformed entry or a camera
    the recorder does not record."""
    serials = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, serial = entry.partition(":")
        if not serial or name not in cameras:
            raise ValueError(f"camera_serials entry {entry!r}: expected name:serial with a name of {cameras}")
        serials[name] = serial.lstrip("_")  # realsense2_camera's serial_no:=_<sn> habit
    return serials


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
        self.camera_serials = parse_camera_serials(p["camera_serials"], self.cameras)
        self.layout = {
            "cameras": {name: topics.camera_topic(name, p["camera_namespace"]) + suffix for name in self.cameras},
            "joint_states": p["joint_states_topic"],
            "command": p["command_topic"],
            "instruction": p["instruction_topic"],
            "intervention": p["intervention_topic"],
        }
        self.storage, self.flush_period = p["storage"], p["flush_period"]

        subscriptions = [(topic, image_cls, image_type, qos_profile_sensor_data)
                         for topic in self.layout["cameras"].values()]
        subscriptions += [
            (self.layout["joint_states"], JointState, bag.JOINT_STATE_TYPE, STATE_QOS),
            (self.layout["command"], JointTrajectory, bag.TRAJECTORY_TYPE, STATE_QOS),
            (self.layout["instruction"], String, bag.STRING_TYPE, STATE_QOS),
            (self.layout["intervention"], Bool, bag.BOOL_TYPE, STATE_QOS),
        ]
        self.topics = {topic: msgtype for topic, _, msgtype, _ in subscriptions}
        for topic, cls, _, qos in subscriptions:
            self.create_subscription(cls, topic, lambda raw, t=topic: self._on_message(t, raw),
                                     qos, raw=True)
        self.writer: bag.EpisodeWriter | None = None
        self.tally = dict.fromkeys(("success", "failure", "unmarked", "interrupted", "discarded"), 0)
        # With write()'s own check, data reaches the disk within 2 x flush_period, idle or not.
        self.create_timer(self.flush_period, self._poll)
        outcomes = {"start": None, "stop": None, "success": True, "failure": False, "discard": None}
        for event in EPISODE_EVENTS:
            self.create_service(Trigger, f"~/{event}",
                                lambda _request, response, e=event: self._respond(response, e, outcomes[e]))

    def _set_storage(self, value: str) -> str | None:
        if value not in bag.STORAGES:
            return f"one of {list(bag.STORAGES)}, not {value!r}"
        self.storage = value
        return None

    def _set_camera_serials(self, value: str) -> str | None:
        try:
            self.camera_serials = parse_camera_serials(value, self.cameras)
        except ValueError as exc:
            return str(exc)
        return None

    def _on_message(self, topic: str, raw: bytes) -> None:
        if self.writer is not None:
            self.writer.write(topic, self.get_clock().now().nanoseconds, raw)

    def _poll(self) -> None:
        if self.writer is not None:
            self.writer.poll()

    def _param(self, name: str):
        return self.get_parameter(name).value

    def start(self) -> Path:
        if self.writer is not None:
            raise RuntimeError(f"episode {self.writer.path.name} is still recording")
        path = Path(self._param("output_dir")).expanduser() / time.strftime("episode_%Y%m%d_%H%M%S")
        while path.exists():
            path = path.with_name(path.name + "_")  # several episodes within one second
        meta = {name: self._param(name) for name in ("instruction", "task", "operator", "teleop_source",
                                                     "operator_note", "robot")}
        meta.update(scene=self._param("scene") or None, seed=None if self._param("seed") < 0 else self._param("seed"),
                    cameras=self.cameras, camera_serials=self.camera_serials, topics=self.layout)
        self.set_parameters([Parameter("interruption", value="")])  # an old one is not this episode's
        self.writer = bag.EpisodeWriter(path, self.topics, meta, self.storage, self.flush_period)
        return path

    def stop(self, success: bool | None) -> Path:
        """End the episode and keep it, with this outcome and the `interruption`, if one was set."""
        if self.writer is None:
            raise RuntimeError("no episode is recording")
        writer, self.writer = self.writer, None
        interrupted = self._param("interruption") or None
        self.set_parameters([Parameter("interruption", value="")])
        path = writer.close(success, self._param("operator_note"), interrupted)
        outcome = {True: "success", False: "failure", None: "unmarked"}[success]
        self.tally["interrupted" if interrupted else outcome] += 1
        return path

    def destroy_node(self):
        if self.writer is not None:  # shut down mid-episode: keep it, outcome unknown
            self.set_parameters([Parameter("interruption", value="the recorder shut down")])
            self.stop(None)
        return super().destroy_node()

    def discard(self) -> Path:
        if self.writer is None:
            raise RuntimeError("no episode is recording")
        writer, self.writer = self.writer, None
        writer.discard()
        self.tally["discarded"] += 1
        return writer.path

    def running_count(self) -> str:
        t = self.tally
        kept = t["success"] + t["failure"] + t["unmarked"] + t["interrupted"]
        return (f"this session: {kept} kept ({t['success']} success, {t['failure']} failure, {t['unmarked']} "
                f"unmarked, {t['interrupted']} interrupted), {t['discarded']} discarded")

    def _respond(self, response, event: str, success: bool | None):
        """One episode event (EPISODE_EVENTS) asked for by a service call."""
        try:
            if event == "start":
                path, verb = self.start(), "recording"
            elif event == "discard":
                path, verb = self.discard(), "discarded"
            else:
                interrupted = self._param("interruption")
                path = self.stop(success)
                verb = f"saved ({'interrupted: ' + interrupted if interrupted else event})"
        except (RuntimeError, OSError) as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(response.message)
        else:
            response.success, response.message = True, f"{verb} {path}; {self.running_count()}"
            self.get_logger().info(response.message)
        return response


def main(args=None) -> None:
    raise SystemExit(run_nodes(lambda: [RecorderNode()], "recorder", args))

if __name__ == "__main__":
    main()
