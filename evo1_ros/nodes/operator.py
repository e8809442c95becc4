"""What every operator node does to the graph — the teleop node (a person at a device) and the
sim expert (the scripted one): stream joint targets to the driver, and run the recorder's
episodes.

Episodes: the recorder's std_srvs/Trigger services, one per episode event
(`evo1_ros.teleop.device.EPISODE_EVENTS`: `<recorder>/start|stop|success|failure|discard`).
Before each start the operator sets the recorder's metadata parameters (instruction, task,
operator, operator_note, teleop_source, and scene/seed in sim: they travel with the bag) and
publishes the instruction on `instruction_topic`. An episode cut short (a device failed) is
stopped with the recorder's `interruption` set to why. The calls block: make them from a thread
of the operator's own, never from a callback (nodes/services.py).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from evo1_ros.nodes import services
from evo1_ros.nodes.messages import to_duration
from evo1_ros.nodes.params import Param
from evo1_ros.robot import topics
from evo1_ros.robot.xarm6 import JOINT_STATE_NAMES
from evo1_ros.teleop.device import EPISODE_EVENTS

PARAMETERS = {  # every operator node declares these
    "instruction": Param("", "instruction of every episode (set on the recorder at each start)", read_when_used=True),
    "task": Param("", "task name stored with each episode (e.g. pick_place_can)", read_when_used=True),
    "operator": Param("", "who records: stored with each episode", read_when_used=True),
    "operator_note": Param("", "note stored with each episode", read_when_used=True),
    "recorder": Param("/recorder", "recorder node: its episode services and metadata parameters"),
    "trajectory_topic": Param(topics.TRAJECTORY, "trajectory_msgs/JointTrajectory to the driver"),
    "instruction_topic": Param(topics.INSTRUCTION, "std_msgs/String published at each episode start"),
    "rate_hz": Param(30.0, "target stream rate, wall clock (the driver's watchdog wants >= 10 Hz)"),
}


class Operator:
    """`node`'s publishers and recorder clients, from its operator PARAMETERS values `p`; `source`
    names how its episodes are driven (stored with each); `closing()` is true once the node shuts
    down (a waiting call then gives up)."""

    def __init__(self, node: Node, p: dict, source: str, closing: Callable[[], bool]):
        self._node, self._source, self._closing = node, source, closing
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._trajectory_pub = node.create_publisher(JointTrajectory, p["trajectory_topic"], reliable)
        self._instruction_pub = node.create_publisher(String, p["instruction_topic"], reliable)
        self._recorder = {event: node.create_client(Trigger, f"{p['recorder']}/{event}") for event in EPISODE_EVENTS}
        self._recorder_params = node.create_client(SetParameters, f"{p['recorder']}/set_parameters")

    def stream(self, points: np.ndarray, offsets: Sequence[float], stamp=None) -> None:
        """Send the driver the targets `points` (n, 7: joints + gripper), `offsets` seconds after
        `stamp` (default now)."""
        msg = JointTrajectory(joint_names=list(JOINT_STATE_NAMES))
        msg.header.stamp = stamp or self._node.get_clock().now().to_msg()
        msg.points = [JointTrajectoryPoint(positions=[*map(float, point)], time_from_start=to_duration(offset))
                      for point, offset in zip(points, offsets)]
        self._trajectory_pub.publish(msg)

    def episode(self, event: str, note: str = "", task: str | None = None, scene: str = "", seed: int = -1) -> str:
        """Recorder episode control (one of EPISODE_EVENTS); the recorder's message. A start stores
        this node's instruction, task (unless `task` is given), operator and note (+ `note`), the
        source and, in sim, `scene` and `seed`. Raises services.ServiceError when the recorder is
        not there or refuses (its reason)."""
        if event not in EPISODE_EVENTS:
            raise ValueError(f"episode event must be one of {EPISODE_EVENTS}, not {event!r}")
        if event == "start":
            get = self._node.get_parameter
            text = get("instruction").value
            self._set_recorder_parameters(
                instruction=text, task=get("task").value if task is None else task, operator=get("operator").value,
                operator_note=" ".join(filter(None, [get("operator_note").value, note])),
                teleop_source=self._source, scene=scene, seed=seed)
        message = services.call_checked(self._recorder[event], abort=self._closing)
        if event == "start":
            self._instruction_pub.publish(String(data=text))
        self._node.get_logger().info(f"recorder {event}: {message}")
        return message

    def interrupt(self, reason: str) -> str:
        """End the recording episode as interrupted by `reason` (kept, outcome unmarked); the
        recorder's message. Raises services.ServiceError (e.g. no episode is recording)."""
        self._set_recorder_parameters(interruption=reason)
        return self.episode("stop")

    def _set_recorder_parameters(self, **values) -> None:
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()
                                                    for name, value in values.items()])
        results = services.call(self._recorder_params, request, abort=self._closing).results
        if refused := [r.reason for r in results if not r.successful]:
            raise services.ServiceError(f"recorder refused its parameters: {refused}")
