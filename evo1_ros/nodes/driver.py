"""xarm6_driver: JointTrajectory in, safety-filtered servo stream to a backend, /joint_states out.

The node is a thin ROS shell around `ServoLoop` (evo1_ros.runtime.servo), which runs the servo
loop on its own thread with deadline sleeps: executor load (message callbacks, services) adds no
jitter to the servo stream, and /joint_states is published from that thread, once per servo tick.

Topics: `trajectory_topic` (trajectory_msgs/JointTrajectory, joint1..joint6 [+ drive_joint]; a
new trajectory replaces the current one; header.stamp 0 means "now"), `joint_states_topic`
(sensor_msgs/JointState, joint1..joint6 + drive_joint), /diagnostics. Services (std_srvs/Trigger):
`~/emergency_stop` (latches), `~/reset` (releases it), `~/recover` (clears a backend error).
The emergency stop brakes at `max_acceleration` to rest and holds there, with the arm still
enabled so `~/reset` resumes at once: a software stop, not a replacement for the control box's
E-stop button. A backend error, by contrast, stops the arm through the controller (SDK state 4).
"""

from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from evo1_ros.nodes.messages import stamp_seconds
from evo1_ros.robot import topics, xarm6
from evo1_ros.robot.backend import DriverBackend, RobotState
from evo1_ros.robot.backends import make_backend
from evo1_ros.runtime.safety import SafetyLimits, TrajectoryRejected
from evo1_ros.runtime.servo import ServoLoop
from evo1_ros.nodes.spin import run_nodes

JOINT_STATE_NAMES = list(xarm6.JOINT_STATE_NAMES)
DIAGNOSTICS_PERIOD_S = 0.5

PARAMETERS = {  # name: (default, description)
    "backend": ("fake", "fake | xarm_sdk | sim"),
    "robot_ip": ("", "xArm controller address (xarm_sdk)"),
    "add_gripper": (True, "an xArm gripper is mounted (xarm_sdk; as in xarm_ros2)"),
    "servo_rate_hz": (100.0, "servo command rate, at most 250 Hz (the control box's limit)"),
    "realtime_priority": (50, "SCHED_FIFO priority for the servo thread when the OS allows it; 0 = off"),
    "watchdog_ms": (100.0, "no fresh trajectory for this long -> decelerate and hold"),
    "joint_limit_margin": (0.05, "rad kept clear of every joint limit"),
    "max_velocity": (xarm6.MOVEIT_MAX_VELOCITY, "rad/s, every joint"),
    "max_acceleration": (xarm6.MOVEIT_MAX_ACCELERATION, "rad/s^2, every joint"),
    "gripper_max_velocity": (1.7, "drive_joint units/s"),
    "trajectory_topic": (topics.TRAJECTORY, "trajectory_msgs/JointTrajectory to follow"),
    "joint_states_topic": (topics.JOINT_STATES, "sensor_msgs/JointState published every servo tick"),
}


class Xarm6DriverNode(Node):
    def __init__(self, backend: DriverBackend | None = None, **node_kwargs):
        """`backend`, when given, is used instead of making one from the `backend` parameter (e.g.
        a sim backend sharing its world with a sim node in the same process). `node_kwargs` go to
        rclpy's Node (context, namespace, parameter_overrides, ...)."""
        super().__init__("xarm6_driver", **node_kwargs)
        for key, (default, description) in PARAMETERS.items():
            self.declare_parameter(key, default, ParameterDescriptor(description=description))
        p = {key: self.get_parameter(key).value for key in PARAMETERS}

        sdk_params = {"robot_ip": p["robot_ip"], "use_gripper": p["add_gripper"]}
        backend_params = sdk_params if p["backend"] == "xarm_sdk" else {}
        limits = SafetyLimits(
            joint_limit_margin=p["joint_limit_margin"], max_velocity=p["max_velocity"],
            max_acceleration=p["max_acceleration"], gripper_max_velocity=p["gripper_max_velocity"],
            watchdog_s=p["watchdog_ms"] / 1000.0,
        )
        backend = backend or make_backend(p["backend"], **backend_params)
        self.backend_name = backend.name
        # On sim time (use_sim_time) trajectories, the watchdog and resets run on the ROS clock, so
        # motions keep their timing in sim seconds however fast the simulation runs.
        clock = self._ros_seconds if self.get_parameter("use_sim_time").value else time.monotonic
        self.loop = ServoLoop(backend, limits, p["servo_rate_hz"], on_state=self._publish_joint_state,
                              clock=clock, realtime_priority=p["realtime_priority"])

        self._joint_state_pub = self.create_publisher(JointState, p["joint_states_topic"], 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, p["trajectory_topic"], self._on_trajectory,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.create_service(Trigger, "~/emergency_stop", self._on_emergency_stop)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/recover", self._on_recover)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._last_rejection_log = ""

        if not self.loop.connect():
            self.get_logger().error(f"{backend.name} backend not ready: {self.loop.status().fault}; "
                                    "fix it and call ~/recover")
        self.loop.start()
        self.get_logger().info(f"{backend.name} backend, servo {p['servo_rate_hz']:.0f} Hz, "
                               f"following {p['trajectory_topic']}")
        if not self.loop.realtime and p["realtime_priority"] > 0:
            self.get_logger().info("servo thread at normal priority (SCHED_FIFO not permitted: "
                                   "see `ulimit -r` / limits.conf rtprio); expect more jitter under load")

    def destroy_node(self):
        self.loop.shutdown()
        return super().destroy_node()

    def _ros_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- trajectories --------------------------------------------------------------------------

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            stamp, times, points = self._trajectory_arrays(msg)
            self.loop.submit(times, points, stamp)
        except TrajectoryRejected as e:
            self._log_rejection(str(e))

    def _trajectory_arrays(self, msg: JointTrajectory) -> tuple[float, np.ndarray, np.ndarray]:
        """(stamp and times on the servo loop's clock, points (n, 7)) from a message naming joints
        in any order; without drive_joint the gripper keeps its current command."""
        index = {name: i for i, name in enumerate(msg.joint_names)}
        missing = [name for name in xarm6.JOINT_NAMES if name not in index]
        if missing:
            raise TrajectoryRejected(f"trajectory lacks joints {missing} (has {list(msg.joint_names)})")
        if any(len(point.positions) != len(msg.joint_names) for point in msg.points):
            raise TrajectoryRejected("a point's positions do not match joint_names")
        columns = [index[name] for name in xarm6.JOINT_NAMES]
        gripper_column = index.get(xarm6.GRIPPER_JOINT)
        current_gripper = self.loop.status().command[-1]
        points = np.array([[point.positions[c] for c in columns]
                           + [point.positions[gripper_column] if gripper_column is not None else current_gripper]
                           for point in msg.points], dtype=float).reshape(-1, len(JOINT_STATE_NAMES))
        # Map the ROS stamp onto the loop's clock through "now" on both (the same clock on sim time).
        ros_now = self._ros_seconds()
        start = self.loop.clock() + ((stamp_seconds(msg.header.stamp) or ros_now) - ros_now)
        offsets = np.array([stamp_seconds(point.time_from_start) for point in msg.points])
        return start, start + offsets, points

    def _log_rejection(self, reason: str) -> None:
        if reason != self._last_rejection_log:  # a broken publisher sends the same thing at 30 Hz
            self.get_logger().warning(f"trajectory refused: {reason}")
            self._last_rejection_log = reason

    # --- outputs -------------------------------------------------------------------------------

    def _publish_joint_state(self, state: RobotState) -> None:
        """Called on the servo thread after every tick."""
        msg = JointState(name=JOINT_STATE_NAMES, position=[*map(float, state.positions), float(state.gripper)])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._joint_state_pub.publish(msg)

    def _publish_diagnostics(self) -> None:
        s = self.loop.status()
        if s.fault:
            level, message = DiagnosticStatus.ERROR, f"backend error: {s.fault}; call ~/recover"
        elif s.estopped:
            level, message = DiagnosticStatus.WARN, "emergency stop latched; call ~/reset"
        elif s.max_tick_s > self.loop.period:
            level, message = DiagnosticStatus.WARN, (f"a servo tick took {s.max_tick_s * 1e3:.0f} ms "
                                                     f"(period {self.loop.period * 1e3:.0f} ms): backend call blocked")
        else:
            level, message = DiagnosticStatus.OK, s.stopping_reason or "following trajectory"
        values = {
            "backend": self.backend_name,
            "fault": s.fault,
            "fault_code": "" if s.fault_code is None else str(s.fault_code),
            "emergency_stop": str(s.estopped),
            "stopping_reason": s.stopping_reason,
            "last_rejected_trajectory": s.rejected,
            "servo_realtime": str(s.realtime),
            "servo_ticks": str(s.ticks),
            "servo_overruns": str(s.overruns),
            "servo_max_late_ms": f"{s.max_late_s * 1e3:.2f}",
            "servo_max_tick_ms": f"{s.max_tick_s * 1e3:.2f}",
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: servo", message=message,
                                  hardware_id=self.backend_name,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    # --- services ------------------------------------------------------------------------------

    def _on_emergency_stop(self, request, response):
        self.loop.emergency_stop()
        self.get_logger().warning("emergency stop: decelerating to rest; latched until ~/reset")
        response.success, response.message = True, "emergency stop latched"
        return response

    def _on_reset(self, request, response):
        self.loop.reset()
        response.success, response.message = True, "emergency stop released; waiting for a new trajectory"
        return response

    def _on_recover(self, request, response):
        try:
            self.loop.recover()
            response.success, response.message = True, "recovered; waiting for a new trajectory"
        except Exception as e:  # BackendError in words, a timeout, or whatever the backend raised
            response.success, response.message = False, f"recovery failed: {e}"
        return response


def main(args=None):
    raise SystemExit(run_nodes(lambda: [Xarm6DriverNode()], "xarm6_driver", args))
