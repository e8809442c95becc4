"""What every operator node does to the graph — the teleop node (a person at a device) and the
sim expert (the scripted one): stream joint targets to the driver, and run the recorder's
episodes.

Episodes: the recorder's std_srvs/Trigger services `<recorder>/start|stop_success|stop_fail|discard`.
Before each start the operator sets the recorder's `instruction` and `operator_note` parameters
(they travel with the bag) and publishes the instruction on `instruction_topic`. The calls block:
make them from a thread of the operator's own, never from a callback (nodes/services.py).
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

PARAMETERS = {  # every operator node declares these
    "instruction": Param("", "instruction of every episode (set on the recorder at each start)", read_when_used=True),
    "operator_note": Param("", "note stored with each episode", read_when_used=True),
    "recorder": Param("/recorder", "recorder node: its episode services and instruction/operator_note parameters"),
    "trajectory_topic": Param(topics.TRAJECTORY, "trajectory_msgs/JointTrajectory to the driver"),
    "instruction_topic": Param(topics.INSTRUCTION, "std_msgs/String published at each episode start"),
    "rate_hz": Param(30.0, "target stream rate, wall clock (the driver's watchdog wants >= 10 Hz)"),
}
EPISODE_ACTIONS = ("start", "stop_success", "stop_fail", "discard")


class Operator:
    """`node`'s publishers and recorder clients, from its operator PARAMETERS values `p`;
    `closing()` is true once the node shuts down (a waiting call then gives up)."""

    def __init__(self, node: Node, p: dict, closing: Callable[[], bool]):
        self._node, self._closing = node, closing
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._trajectory_pub = node.create_publisher(JointTrajectory, p["trajectory_topic"], reliable)
        self._instruction_pub = node.create_publisher(String, p["instruction_topic"], reliable)
        self._recorder = {action: node.create_client(Trigger, f"{p['recorder']}/{action}")
                          for action in EPISODE_ACTIONS}
        self._recorder_params = node.create_client(SetParameters, f"{p['recorder']}/set_parameters")

    def stream(self, points: np.ndarray, offsets: Sequence[float], stamp=None) -> None:
        """Send the driver the targets `points` (n, 7: joints + gripper), `offsets` seconds after
        `stamp` (default now)."""
        msg = JointTrajectory(joint_names=list(JOINT_STATE_NAMES))
        msg.header.stamp = stamp or self._node.get_clock().now().to_msg()
        msg.points = [JointTrajectoryPoint(positions=[*map(float, point)], time_from_start=to_duration(offset))
                      for point, offset in zip(points, offsets)]
        self._trajectory_pub.publish(msg)

    def episode(self, action: str, note: str = "") -> str:
        """Recorder episode control (one of EPISODE_ACTIONS); the recorder's message. Raises
        services.ServiceError when the recorder is not there or refuses (its reason)."""
        if action == "start":
            get = self._node.get_parameter
            text = get("instruction").value
            note = " ".join(filter(None, [get("operator_note").value, note]))
            request = SetParameters.Request(parameters=[Parameter("instruction", value=text).to_parameter_msg(),
                                                        Parameter("operator_note", value=note).to_parameter_msg()])
            results = services.call(self._recorder_params, request, abort=self._closing).results
            if refused := [r.reason for r in results if not r.successful]:
                raise services.ServiceError(f"recorder refused its parameters: {refused}")
        message = services.call_checked(self._recorder[action], abort=self._closing)
        if action == "start":
            self._instruction_pub.publish(String(data=text))
        self._node.get_logger().info(f"recorder {action}: {message}")
        return message
