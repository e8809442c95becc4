"""xarm6_driver: JointTrajectory in, safety-filtered servo stream to a backend, /joint_states out.

A lifecycle node (rclpy.lifecycle), like a ros2_control hardware interface:
- configure: make the backend and connect (the arm comes up in servo mode), start the servo
  thread, which holds the arm where it stands and publishes its joint states;
- activate: follow trajectories (the first motion is slowed: runtime/safety.py);
- deactivate: refuse trajectories, bring the arm to rest and hold it there;
- cleanup / shutdown: stop the servo thread, stop the arm, disconnect.
`start_driver` builds the node and, unless its `autostart` parameter is false, takes it to
active: every launcher and in-process graph makes the driver through it. Under `ros2 launch` the
launch file sets autostart false and makes the transitions itself (launch_ros LifecycleNode).

The node is a thin ROS shell around `ServoLoop` (evo1_ros.runtime.servo), which runs on its own
thread with deadline sleeps: executor load adds no jitter to the servo stream, and /joint_states
is published from that thread once per tick, stamped with when the state was measured and
carrying velocities.

Topics: `trajectory_topic` (trajectory_msgs/JointTrajectory, joint1..joint6 [+ drive_joint]; a
new trajectory replaces the current one; header.stamp 0 means "now"), `joint_states_topic`
(sensor_msgs/JointState, joint1..joint6 + drive_joint), /diagnostics. Services (std_srvs/Trigger):
`~/emergency_stop` (latches), `~/reset` (releases it), `~/recover` (clears a backend error);
`~/set_teaching` (std_srvs/SetBool: true = the arm is moved by hand, no joint is commanded and
trajectories move only the gripper, through the safety filter, so the operator can open and close
it while hand-guiding; false = back to following, the arm holding where it was put). The emergency stop brakes at
`max_acceleration` to rest and holds there, with the arm still enabled so `~/reset` resumes at
once: a software stop, not a replacement for the control box's E-stop button. A backend error,
by contrast, stops the arm through the controller (SDK state 4).

Parameters: the safety limits may change at run time; each change is validated and applied, all
values of one request together, to the running servo loop from its next tick, or refused with
the reason. The others are read-only. If the servo thread dies (any exception) the arm is
stopped, the reason goes to /diagnostics (ERROR) and the log, and the node takes itself to
unconfigured: it never stays active while commanding nothing.
"""

from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from evo1_ros.nodes.messages import stamp_seconds
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot import topics, xarm6
from evo1_ros.robot.backend import DriverBackend, RobotState
from evo1_ros.robot.backends import BACKENDS, make_backend
from evo1_ros.runtime.safety import SafetyLimits, TrajectoryRejected
from evo1_ros.runtime.servo import MAX_SERVO_RATE_HZ, ServoLoop

JOINT_STATE_NAMES = list(xarm6.JOINT_STATE_NAMES)
DIAGNOSTICS_PERIOD_S = 0.5
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE

READ_ONLY = {  # name: (default, description); fixed once the node is made
    "backend": ("fake", "fake | xarm_sdk | sim"),
    "robot_ip": ("", "xArm controller address (xarm_sdk)"),
    "add_gripper": (True, "an xArm gripper is mounted (xarm_sdk; as in xarm_ros2)"),
    "servo_rate_hz": (100.0, "servo command rate, at most 250 Hz (the control box's limit)"),
    "realtime_priority": (50, "SCHED_FIFO priority for the servo thread when the OS allows it; 0 = off"),
    "trajectory_topic": (topics.TRAJECTORY, "trajectory_msgs/JointTrajectory to follow"),
    "joint_states_topic": (topics.JOINT_STATES, "sensor_msgs/JointState published every servo tick"),
    "autostart": (True, "configure and activate at start; false: a lifecycle manager (ros2 launch) does"),
}
LIMITS = {  # name: (default, description); validated and applied on set (SafetyLimits says what is valid)
    "watchdog_ms": (100.0, "no fresh trajectory for this long -> decelerate and hold"),
    "joint_limit_margin": (0.05, "rad kept clear of every joint limit"),
    "max_velocity": (xarm6.MOVEIT_MAX_VELOCITY, f"rad/s, every joint (at most {xarm6.URDF_MAX_VELOCITY})"),
    "max_acceleration": (xarm6.MOVEIT_MAX_ACCELERATION, "rad/s^2, every joint"),
    "gripper_max_velocity": (1.7, "drive_joint units/s"),
    "first_motion_scale": (0.25, "fraction of max_velocity for the first motion after activation, reset, recover, "
                                 "teaching or a hold of 1 s or more, toward a target farther than "
                                 "first_motion_tolerance, until within first_motion_tolerance of it"),
    "first_motion_tolerance": (0.02, "rad: a first target this close is a continuation (full speed); a first motion "
                                     "ends once every joint is this close to its target"),
}
PARAMETERS = {**READ_ONLY, **LIMITS}


def limits_from(values: dict) -> SafetyLimits:
    """SafetyLimits from the LIMITS parameters; ValueError saying which value is wrong."""
    return SafetyLimits(
        joint_limit_margin=values["joint_limit_margin"], max_velocity=values["max_velocity"],
        max_acceleration=values["max_acceleration"], gripper_max_velocity=values["gripper_max_velocity"],
        watchdog_s=values["watchdog_ms"] / 1000.0, first_motion_scale=values["first_motion_scale"],
        first_motion_tolerance=values["first_motion_tolerance"])


class Xarm6DriverNode(LifecycleNode):
    def __init__(self, backend: DriverBackend | None = None, **node_kwargs):
        """`backend`, when given, is used instead of making one from the `backend` parameter (e.g.
        a sim backend sharing its world with a sim node in the same process). `node_kwargs` go to
        rclpy's Node (context, namespace, parameter_overrides, ...). Raises ValueError on a bad
        parameter. Starts unconfigured: use `start_driver`."""
        super().__init__("xarm6_driver", **node_kwargs)
        for key, (default, description) in PARAMETERS.items():
            self.declare_parameter(key, default, ParameterDescriptor(description=description,
                                                                     read_only=key in READ_ONLY))
        self.params = {key: self.get_parameter(key).value for key in READ_ONLY}
        if backend is None and self.params["backend"] not in BACKENDS:
            raise ValueError(f"backend:={self.params['backend']!r}: choose one of {sorted(BACKENDS)}")
        if not 0 < self.params["servo_rate_hz"] <= MAX_SERVO_RATE_HZ:
            raise ValueError(f"servo_rate_hz:={self.params['servo_rate_hz']}: must be in (0, {MAX_SERVO_RATE_HZ:g}] Hz")
        self.limits = limits_from({key: self.get_parameter(key).value for key in LIMITS})
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._given_backend = backend
        self.backend_name = backend.name if backend is not None else self.params["backend"]
        self.loop: ServoLoop | None = None
        self.transition_failure = ""  # why the last configure failed
        self._death = ""  # why the servo thread died, until the next configure
        self._logged = {"fault": "", "warning": ""}  # what the log already said

        self._joint_state_pub = self.create_publisher(JointState, self.params["joint_states_topic"], 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, self.params["trajectory_topic"], self._on_trajectory,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.create_service(Trigger, "~/emergency_stop", self._on_emergency_stop)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/recover", self._on_recover)
        self.create_service(SetBool, "~/set_teaching", self._on_set_teaching)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_diagnostics_timer)
        self._last_rejection_log = ""

    def _ros_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- lifecycle -----------------------------------------------------------------------------

    def on_configure(self, state) -> TransitionCallbackReturn:
        p = self.params
        try:
            backend = self._given_backend or make_backend(
                p["backend"], **({"robot_ip": p["robot_ip"], "use_gripper": p["add_gripper"]}
                                 if p["backend"] == "xarm_sdk" else {}))
        except (ValueError, ImportError) as e:
            return self._configure_failed(f"{p['backend']} backend: {e}")
        # On sim time (use_sim_time) trajectories, the watchdog and resets run on the ROS clock, so
        # motions keep their timing in sim seconds however fast the simulation runs.
        self._sim_time = self.get_parameter("use_sim_time").value
        clock = self._ros_seconds if self._sim_time else time.monotonic
        loop = ServoLoop(backend, self.limits, p["servo_rate_hz"], on_state=self._publish_joint_state, clock=clock,
                         realtime_priority=p["realtime_priority"], on_death=self._on_servo_death,
                         ticks_on_clock=self._sim_time)
        if not loop.connect():
            loop.shutdown()
            return self._configure_failed(f"{backend.name} backend not ready: {loop.status().fault}")
        self.loop, self._death, self.transition_failure = loop, "", ""
        loop.start()
        self.get_logger().info(f"{backend.name} backend connected, servo {p['servo_rate_hz']:.0f} Hz, holding the arm")
        if not loop.realtime and p["realtime_priority"] > 0:
            self.get_logger().info("servo thread at normal priority (SCHED_FIFO not permitted: "
                                   "see `ulimit -r` / limits.conf rtprio); expect more jitter under load")
        return SUCCESS

    def _configure_failed(self, why: str) -> TransitionCallbackReturn:
        self.transition_failure = why
        self.get_logger().error(f"configure failed: {why}")
        return FAILURE

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.loop.activate()
        self.get_logger().info(f"active: following {self.params['trajectory_topic']}")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        if self.loop.status().teaching:
            try:
                self.loop.set_teaching(False)
            except Exception as e:  # the arm stays in teaching mode; holding still applies to commands
                self.get_logger().error(f"deactivate: leaving teaching mode failed: {e}")
        self.loop.deactivate()
        self.get_logger().info("inactive: holding the arm")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def _release(self) -> None:
        if self.loop is not None:
            self.loop.shutdown()
            self.loop = None
            self.get_logger().info("disconnected")

    def destroy_node(self):
        self._release()
        return super().destroy_node()

    def _on_servo_death(self, reason: str) -> None:
        """Called on the dying servo thread (the arm already stopped); the executor takes it down."""
        self._death = reason

    # --- parameters ----------------------------------------------------------------------------

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changed = {p.name: p.value for p in parameters if p.name in LIMITS}
        if not changed:
            return SetParametersResult(successful=True)
        try:
            limits = limits_from({**{key: self.get_parameter(key).value for key in LIMITS}, **changed})
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.limits = limits
        if self.loop is not None:
            self.loop.set_limits(limits)
        self.get_logger().info(f"safety limits changed: {changed}")
        return SetParametersResult(successful=True)

    # --- trajectories --------------------------------------------------------------------------

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            if self.loop is None:
                raise TrajectoryRejected("the driver is not configured (not connected to the arm)")
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
        """Publish the measured state, stamped with when it was measured (servo thread, every tick).

        On sim time its age in wall seconds says nothing about sim time: the sim is read as it ticks."""
        age_ns = 0 if self._sim_time else int((time.monotonic() - state.stamp) * 1e9)
        msg = JointState(name=JOINT_STATE_NAMES, position=[*map(float, state.positions), float(state.gripper)],
                         velocity=[*map(float, state.velocities)])
        msg.header.stamp = Time(nanoseconds=max(0, self.get_clock().now().nanoseconds - age_ns)).to_msg()
        self._joint_state_pub.publish(msg)

    def _on_diagnostics_timer(self) -> None:
        if self._death and self.loop is not None:
            self._take_down()
        self._publish_diagnostics()

    def _take_down(self) -> None:
        """The servo thread died: say so, and go to unconfigured rather than stay active commanding nothing."""
        self.get_logger().error(f"{self._death}; the arm was stopped. The driver goes to unconfigured: configure "
                                f"and activate it to resume.\n{self.loop.death_details}")
        if self.loop.status().active:
            self.trigger_deactivate()
        self.trigger_cleanup()

    def _status(self) -> tuple[int, str, dict]:
        """(level, message, values) of the driver now; logs faults and warnings once each."""
        if self.loop is None:
            if self._death:
                return DiagnosticStatus.ERROR, (f"{self._death}; the arm was stopped and the driver is unconfigured: "
                                                "configure and activate it to resume"), {}
            return DiagnosticStatus.WARN, "not configured: not connected to the arm", {}
        s = self.loop.status()
        warning = s.state.warning_words if s.state is not None else ""
        for kind, text in (("fault", s.fault), ("warning", warning)):
            if text != self._logged[kind]:
                if text:
                    log = self.get_logger().error if kind == "fault" else self.get_logger().warning
                    log(f"backend error: {text}; the arm was stopped: call ~/recover" if kind == "fault" else text)
                self._logged[kind] = text
        if s.fault:
            level, message = DiagnosticStatus.ERROR, f"backend error: {s.fault}; the arm was stopped: call ~/recover"
        elif s.estopped:
            level, message = DiagnosticStatus.WARN, "emergency stop latched; call ~/reset"
        elif warning:
            level, message = DiagnosticStatus.WARN, warning
        elif s.max_tick_s > self.loop.period:
            level, message = DiagnosticStatus.WARN, (f"a servo tick took {s.max_tick_s * 1e3:.0f} ms "
                                                     f"(period {self.loop.period * 1e3:.0f} ms): backend call blocked")
        else:
            level, message = DiagnosticStatus.OK, s.stopping_reason or "following trajectory"
        values = {
            "fault": s.fault,
            "fault_code": "" if s.fault_code is None else str(s.fault_code),
            "controller_warning": warning,
            "active": str(s.active),
            "teaching": str(s.teaching),
            "emergency_stop": str(s.estopped),
            "stopping_reason": s.stopping_reason,
            "last_rejected_trajectory": s.rejected,
            "servo_realtime": str(s.realtime),
            "servo_ticks": str(s.ticks),
            "servo_overruns": str(s.overruns),
            "servo_max_late_ms": f"{s.max_late_s * 1e3:.2f}",
            "servo_max_tick_ms": f"{s.max_tick_s * 1e3:.2f}",
            **self.loop.backend_diagnostics(),
        }
        return level, message, values

    def _publish_diagnostics(self) -> None:
        level, message, values = self._status()
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: servo", message=message,
                                  hardware_id=self.backend_name,
                                  values=[KeyValue(key=k, value=v) for k, v in {"backend": self.backend_name,
                                                                                **values}.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    # --- services ------------------------------------------------------------------------------

    def _not_configured(self, response):
        response.success, response.message = False, "the driver is not configured (not connected to the arm)"
        return response

    def _on_emergency_stop(self, request, response):
        if self.loop is None:
            return self._not_configured(response)
        self.loop.emergency_stop()
        self.get_logger().warning("emergency stop: decelerating to rest; latched until ~/reset")
        response.success, response.message = True, "emergency stop latched"
        return response

    def _on_reset(self, request, response):
        if self.loop is None:
            return self._not_configured(response)
        self.loop.reset()
        response.success, response.message = True, "emergency stop released; waiting for a new trajectory"
        return response

    def _on_recover(self, request, response):
        if self.loop is None:
            return self._not_configured(response)
        try:
            self.loop.recover()
            response.success, response.message = True, "recovered; waiting for a new trajectory"
            self.get_logger().info("recovered")
        except Exception as e:  # BackendError in words, a timeout, or whatever the backend raised
            response.success, response.message = False, f"recovery failed: {e}"
        return response

    def _on_set_teaching(self, request, response):
        if self.loop is None:
            return self._not_configured(response)
        try:
            self.loop.set_teaching(request.data)
        except Exception as e:  # a backend without teaching mode, or the controller refused
            response.success = False
            response.message = f"teaching mode {'on' if request.data else 'off'} refused: {e}"
            return response
        response.success = True
        response.message = ("teaching mode: move the arm by hand (trajectories move the gripper only)" if request.data
                            else "following again; the arm holds where it was put")
        self.get_logger().info(response.message)
        return response


def start_driver(backend: DriverBackend | None = None, **node_kwargs) -> Xarm6DriverNode:
    """The driver node, taken to active unless its `autostart` parameter is false. Every launcher
    and in-process graph makes the driver here. Raises ValueError (a bad parameter) or RuntimeError
    (a transition failed, e.g. the arm is unreachable; the node is destroyed)."""
    node = Xarm6DriverNode(backend=backend, **node_kwargs)
    if node.get_parameter("autostart").value:
        for name, transition in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
            if transition() != SUCCESS:
                why = node.transition_failure or "see the log"
                node.destroy_node()
                raise RuntimeError(f"xarm6_driver: {name} failed: {why}")
    return node


def main(args=None):
    raise SystemExit(run_nodes(lambda: [start_driver()], "xarm6_driver", args))
