"""teleop: a person moves the arm through an input device and runs the recorder's episodes.

Sources (`source` parameter; evo1_ros.teleop.sources, where a new device is added): `keyboard`
(jog keys), `teaching` (the xArm's teaching mode, the arm moved by hand; the node asks the
driver's `~/set_teaching` for it and streams the guided pose as the command, the gripper keys
move the gripper), `leader` (a Dynamixel leader arm on `leader_config`, or any JointState leader
on `leader_topic`), `spacemouse`, `joy` (sensor_msgs/Joy through the `joy_map` YAML) and `twist`
(geometry_msgs/Twist). The targets go to the driver on `trajectory_topic`, one period ahead, so
its safety filter bounds everything that reaches the arm; Cartesian devices go through
differential IK (robot/diffik.py), the leader through a per-step clamp with a slow start.

Episodes (nodes/operator.py): keys b x s f d (start, stop and keep, success, failure, discard),
the Joy map's episode buttons (a pad, or a foot pedal's map beside another source), or the
recorder's own services. The recorder's answers, with its running count, go to the log.

Interventions (`policy`, e.g. /evo1_inference): the policy drives until the operator engages the
device (the deadman held, the puck deflected; a leader or keyboard needs a pedal's deadman in the
Joy map). The node then pauses the policy (`<policy>/pause`) and, once it is paused, streams the
operator's targets from where the arm is; `release_s` after the device is released it stops and
resumes the policy (`<policy>/resume`: its next chunk waits for fresh observations). It publishes
on `intervention_topic` (std_msgs/Bool), every period, whether the operator has the arm (the
operator's first target one period after the first true): the recorder records it and `convert`
turns it into a per-frame intervention flag.

Device failures (unplugged, a Dynamixel read error, a silent topic): the node sends no further
target, not a stale one, not a zero one (the driver's watchdog then brings the arm to rest and
holds it), pauses the policy if one drives, ends the recording episode as interrupted (what was
recorded is kept) and says which device failed. It tries the device again every second; when it
is back, targets start over from where the arm is (a leader with its slow start). With a policy,
the arm stays held until the operator engages the device again.

Service calls (episodes, pause/resume, teaching mode) block, so they run in order on a thread of
the node's own; keys come from this process's terminal on the main thread.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import replace
from typing import Callable

import numpy as np
from geometry_msgs.msg import Twist
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Joy, JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger

from evo1_ros.nodes import operator, services
from evo1_ros.nodes.messages import MessageError, joint_positions
from evo1_ros.nodes.operator import Operator
from evo1_ros.nodes.params import Param, declare, not_positive
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot import topics
from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_JOINT, GRIPPER_OPEN, JOINT_NAMES, JOINT_STATE_NAMES
from evo1_ros.teleop.device import DeviceError
from evo1_ros.teleop.inputs import StreamedInput
from evo1_ros.teleop.joy import JoyMap, JoyMapper, TwistInput, twist_command
from evo1_ros.teleop.keys import HELP, KEYMAP, JogSteps
from evo1_ros.teleop.leader import FollowLimits, JointStateMapping, LeaderConfig
from evo1_ros.teleop.sources import SOURCES, ArmTarget, KeyboardSource, SourceSettings, make_source
from evo1_ros.teleop.spacemouse import SpaceMouseConfig

RETRY_S = 1.0  # how often a failed device is tried again
LOG_EVERY_S = 5.0  # repeated complaints (a device still gone, malformed messages) at most this often

PARAMETERS = {
    **operator.PARAMETERS,
    "source": Param("keyboard", f"operator input: {' | '.join(SOURCES)}"),
    "joint_states_topic": Param(topics.JOINT_STATES, "measured joints (teaching: the guided pose)"),
    "driver": Param("/xarm6_driver", "the driver node, whose ~/set_teaching hand-guided sources call"),
    "joint_step": Param(JogSteps.joint, "keyboard: rad per joint key press", apply="_set_joint_step"),
    "linear_step": Param(JogSteps.linear, "keyboard: m per Cartesian key press", apply="_set_linear_step"),
    "angular_step": Param(JogSteps.angular, "keyboard: rad per yaw key press", apply="_set_angular_step"),
    "joint_limit_margin": Param(0.05, "rad kept clear of the joint limits by leader and Cartesian targets: the "
                                      "driver's joint_limit_margin"),
    "device_timeout_ms": Param(500.0, "leader, twist: no input for this long is a device failure (a Joy map has "
                                      "its own timeout_ms)"),
    "leader_config": Param("", "leader: the Dynamixel leader's YAML (evo1-ros leader-calibrate); empty: follow "
                               "leader_topic"),
    "leader_topic": Param("/leader/joint_states", "leader: sensor_msgs/JointState of the leader (without "
                                                  "leader_config)"),
    "leader_joint_names": Param(list(JOINT_NAMES), "leader: the names of joint1..joint6 on leader_topic, in order"),
    "leader_gripper_joint": Param(GRIPPER_JOINT, "leader: the gripper's name on leader_topic (empty: none)"),
    "leader_gripper_open": Param(GRIPPER_OPEN, "leader: its gripper's position when open (leader_topic units)"),
    "leader_gripper_closed": Param(GRIPPER_CLOSED, "leader: its gripper's position when closed"),
    "leader_max_step": Param(FollowLimits.max_step, "leader: rad per period each joint may move"),
    "leader_start_step": Param(FollowLimits.start_step, "leader: rad per period until the arm has caught up"),
    "spacemouse_config": Param("", "spacemouse: YAML of SpaceMouseConfig settings (teleop/spacemouse.py: "
                                   "device, frame, device_yaw, speeds, deadband, buttons); empty: defaults"),
    "joy_map": Param("", "Joy map YAML (config/teleop_joy_xbox.yaml): moves the arm with source joy; beside "
                         "any other source, a pad's or pedal's episode buttons and deadman"),
    "joy_topic": Param("/joy", "sensor_msgs/Joy of the joy node"),
    "twist_topic": Param("/spacenav/twist", "twist: geometry_msgs/Twist to follow"),
    "twist_frame": Param("base", "twist: the axes of the Twist: base (link_base) or tool (link_tcp)"),
    "twist_linear_scale": Param(1.0, "twist: m/s per unit of Twist.linear"),
    "twist_angular_scale": Param(1.0, "twist: rad/s per unit of Twist.angular"),
    "policy": Param("", "inference node the operator takes the arm over from (e.g. /evo1_inference): its "
                        "~/pause while the device is engaged, ~/resume after; empty: no policy"),
    "release_s": Param(0.5, "policy: how long the device must be released before the policy gets the arm back"),
    "intervention_topic": Param(topics.INTERVENTION, "policy: std_msgs/Bool, whether the operator has the arm"),
}


class TeleopNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("teleop", **node_kwargs)
        p = declare(self, PARAMETERS)
        if p["source"] not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, not {p['source']!r}")
        for name in ("rate_hz", "device_timeout_ms", "release_s"):
            if reason := not_positive(p[name]):
                raise ValueError(f"{name} {reason}")
        self.period, self.release_s = 1.0 / p["rate_hz"], p["release_s"]
        self.joy = JoyMapper(JoyMap.load(p["joy_map"])) if p["joy_map"] else None
        if p["source"] == "joy" and self.joy is None:
            raise ValueError("source joy needs joy_map: a Joy map YAML (e.g. config/teleop_joy_xbox.yaml)")
        self.policy = p["policy"].rstrip("/")
        self._pedal = None  # the Joy deadman beside a source that has none: whether the operator drives
        if self.joy is not None and p["source"] != "joy":
            self._pedal = StreamedInput("Joy topic (pedal)", self.joy.map.timeout_ms / 1e3)
        self.source = make_source(p["source"], self._settings(p))
        try:
            self._check_policy_takeover(p["source"])
        except ValueError:
            self.source.close()
            raise
        self.done = threading.Event()  # the node is closing
        self.target: ArmTarget | None = None  # the last one streamed
        self._measured: ArmTarget | None = None
        self.failure: str | None = None  # the device failure the node is waiting out
        self._device_ready = False  # the device has worked since the start (before that, failing is waiting)
        self._retry_at = 0.0
        self._logged_at: dict[str, float] = {}
        # Who has the arm: "operator" (always, without a policy), "policy", "pausing" (asked the policy
        # to pause), "resuming" (asked it to resume), "held" (a device failed while a policy was set:
        # nobody streams until the operator engages the device again). Changed under the lock: the
        # timer and the worker both change it.
        self.control = "policy" if self.policy else "operator"
        self._control_lock = threading.Lock()
        self._fresh_start = False  # the operator took over: the source starts over from the measured pose
        self._last_engaged = -float("inf")
        self._await_release = False  # a pause failed: wait until the device is released before trying again
        self._announced = False  # the last intervention flag published

        self.operator = Operator(self, p, p["source"], closing=self.done.is_set)
        self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_state, 10)
        self._subscribe_devices(p)
        self._jobs: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="teleop-services", daemon=True)
        self._worker.start()
        if self.policy:
            self._policy_clients = {name: self.create_client(Trigger, f"{self.policy}/{name}")
                                    for name in ("pause", "resume")}
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self._intervention_pub = self.create_publisher(Bool, p["intervention_topic"], reliable)
        self._teaching = None
        if self.source.hand_guided:
            self._teaching = self.create_client(SetBool, f"{p['driver']}/set_teaching")
            self._jobs.put(lambda: self.set_teaching(True))
        # Wall-clock timer even under use_sim_time: the driver's watchdog counts wall time.
        self.create_timer(self.period, self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"teleop source {p['source']}, streaming to {p['trajectory_topic']}"
                               + (f", taking over from {self.policy} while engaged" if self.policy else ""))

    def _check_policy_takeover(self, source: str) -> None:
        if not self.policy:
            return
        if self.source.hand_guided:
            raise ValueError(f"source {source} cannot take over from a policy (the arm would have to leave "
                             "servo mode); use a device")
        if self.source.engaged() is None and (self._pedal is None or "deadman" not in self.joy.map.buttons):
            raise ValueError(f"source {source} has no deadman to take over from the policy with: give a joy_map "
                             "whose buttons include a deadman (a foot pedal)")

    def _settings(self, p: dict) -> SourceSettings:
        """The sources' settings from the parameters; ValueError in words for wrong ones."""
        leader = LeaderConfig.load(p["leader_config"]) if p["source"] == "leader" and p["leader_config"] else None
        spacemouse = SpaceMouseConfig.load(p["spacemouse_config"]) if p["spacemouse_config"] else SpaceMouseConfig()
        self.leader_mapping = JointStateMapping(tuple(p["leader_joint_names"]), p["leader_gripper_joint"] or None,
                                                p["leader_gripper_open"], p["leader_gripper_closed"])
        self.twist = TwistInput(p["twist_frame"], p["twist_linear_scale"], p["twist_angular_scale"],
                                p["device_timeout_ms"])
        return SourceSettings(
            period=self.period, joint_limit_margin=p["joint_limit_margin"], timeout_s=p["device_timeout_ms"] / 1e3,
            jog_steps=JogSteps(p["joint_step"], p["linear_step"], p["angular_step"]), leader_config=leader,
            follow=FollowLimits(max_step=p["leader_max_step"], start_step=p["leader_start_step"]),
            spacemouse=spacemouse, joy_timeout_s=(self.joy.map.timeout_ms / 1e3) if self.joy else 0.5)

    def _subscribe_devices(self, p: dict) -> None:
        """Topics the devices stream on: sensor-data QoS (only the newest message matters; it also
        takes the joy node's and GELLO's reliable publishers)."""
        if p["source"] == "leader" and not p["leader_config"]:
            self.create_subscription(JointState, p["leader_topic"], self._on_leader, qos_profile_sensor_data)
        if p["source"] == "twist":
            self.create_subscription(Twist, p["twist_topic"], self._on_twist, qos_profile_sensor_data)
        if self.joy is not None:
            self.create_subscription(Joy, p["joy_topic"], self._on_joy, qos_profile_sensor_data)

    def set_teaching(self, on: bool) -> bool:
        """Ask the driver to enter (on) or leave teaching mode; whether it did (failures are logged)."""
        try:
            message = services.call_checked(self._teaching, SetBool.Request(data=on), abort=self.done.is_set)
        except services.ServiceError as exc:
            self.get_logger().error(f"teaching mode {'on' if on else 'off'}: {exc}")
            return False
        self.get_logger().info(f"teaching mode {'on' if on else 'off'}: {message}")
        return True

    # --- parameters -----------------------------------------------------------------------------

    def _set_step(self, field: str, value: float) -> str | None:
        if not isinstance(self.source, KeyboardSource):
            return "jog steps apply to the keyboard source only"
        if reason := not_positive(value):
            return reason
        self.source.steps = replace(self.source.steps, **{field: value})
        return None

    def _set_joint_step(self, value: float) -> str | None:
        return self._set_step("joint", value)

    def _set_linear_step(self, value: float) -> str | None:
        return self._set_step("linear", value)

    def _set_angular_step(self, value: float) -> str | None:
        return self._set_step("angular", value)

    # --- input ----------------------------------------------------------------------------------

    def handle_key(self, key: str) -> None:
        """One key press, from the key reader's thread."""
        command = KEYMAP.get(key)
        if command is None:
            return
        if command.kind == "help":
            print(HELP, flush=True)
        elif command.kind == "episode":
            self.episode(command.arg)
        elif note := self.source.press(command):
            self.get_logger().info(note)

    def episode(self, event: str) -> None:
        """Ask the recorder for an episode event (EPISODE_EVENTS), in order with the node's other
        service calls; the answer (or why not) goes to the log."""
        self._jobs.put(lambda: self.operator.episode(event))

    def read_terminal(self) -> None:
        """Keys from this process's terminal until the node is done (Ctrl-C interrupts)."""
        from evo1_ros.teleop.keys import Terminal

        print(HELP, flush=True)
        with Terminal() as terminal:
            for key in terminal.keys():
                if self.done.is_set():
                    return
                if key is not None:
                    self.handle_key(key)

    def _complain(self, key: str, text: str) -> None:
        """A warning that may repeat every message: at most once per LOG_EVERY_S per key."""
        now = time.monotonic()
        if now - self._logged_at.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[key] = now
            self.get_logger().warning(text)

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q = joint_positions(msg, JOINT_STATE_NAMES)
        except MessageError as exc:
            self._complain("joint_state", f"joint state ignored: {exc}")
            return
        if self._measured is None:
            self.get_logger().info("joint target starts from the measured pose; press h for help")
        self._measured = ArmTarget(q[:6], float(q[6]))

    def _on_leader(self, msg: JointState) -> None:
        try:
            self.source.feed.put(self.leader_mapping.reading(msg.name, msg.position))
        except ValueError as exc:
            self._complain("leader", f"leader joint state ignored: {exc}")

    def _on_twist(self, msg: Twist) -> None:
        linear, angular = msg.linear, msg.angular
        try:
            command = twist_command([linear.x, linear.y, linear.z], [angular.x, angular.y, angular.z], self.twist)
        except ValueError as exc:
            self._complain("twist", f"Twist ignored: {exc}")
            return
        self.source.feed.put(command)

    def _on_joy(self, msg: Joy) -> None:
        try:
            command = self.joy.command(msg.axes, msg.buttons)
        except ValueError as exc:
            self._complain("joy", f"Joy message ignored: {exc}")
            return
        (self._pedal or self.source.feed).put(command)
        for event in command.events:
            self.episode(event)

    # --- streaming ------------------------------------------------------------------------------

    def _tick(self) -> None:
        measured = self._measured
        if measured is None:
            return
        now = time.monotonic()
        if self.failure is not None:
            self._retry_device(now)
        else:
            if self._fresh_start:
                self._fresh_start = False
                self.source.restart()
            try:
                target = self.source.next_target(measured)
                engaged = self._engaged()
            except DeviceError as exc:
                self._device_failed(str(exc))
            else:
                if not self._device_ready:
                    self._device_ready = True
                    self.get_logger().info("device ready")
                if self.policy:
                    self._hand_over(engaged, now)
                # With a policy, the operator's targets go out only once an earlier period told the
                # recorder the operator has the arm: every one of them comes after its flag.
                if self.control == "operator" and target is not None and (self._announced or not self.policy):
                    self.target = target
                    self.operator.stream(np.append(target.joints, target.gripper)[None], [self.period])
        if self.policy:
            self._announced = self.control == "operator" and self.failure is None
            self._intervention_pub.publish(Bool(data=self._announced))

    def _engaged(self) -> bool:
        """Whether the operator drives: the pedal's deadman beside a source without one, else the
        source's own. Raises DeviceError when the pedal has gone silent while it matters."""
        if self.policy and self.source.engaged() is None:
            return self._pedal.read().engaged
        return bool(self.source.engaged())

    def _hand_over(self, engaged: bool, now: float) -> None:
        """Move the arm between policy and operator as the device is engaged and released."""
        if engaged:
            self._last_engaged = now
        else:
            self._await_release = False
        with self._control_lock:
            if self.control == "policy" and engaged and not self._await_release:
                self.control = "pausing"
                self._jobs.put(lambda: self._call_policy("pause", then="operator"))
            elif self.control == "held" and engaged:  # the policy is paused already
                self.control, self._fresh_start = "operator", True
            elif self.control == "operator" and now - self._last_engaged > self.release_s:
                self.control = "resuming"
                self._jobs.put(lambda: self._call_policy("resume", then="policy"))

    def _call_policy(self, service: str, then: str) -> None:
        """On the worker: pause or resume the policy; then hand the arm to `then` unless the state
        moved on meanwhile (a device failed: it stays held)."""
        asked = "pausing" if service == "pause" else "resuming"
        try:
            message = services.call_checked(self._policy_clients[service], abort=self.done.is_set)
        except services.ServiceError as exc:
            self.get_logger().error(f"policy {service}: {exc}; the arm holds")
            with self._control_lock:
                if self.control == asked:
                    self.control = "policy" if service == "pause" else "held"
                    self._await_release = True
            return
        with self._control_lock:
            if self.control == asked:
                self.control, self._fresh_start = then, then == "operator"
                self.get_logger().info(f"{'operator' if then == 'operator' else 'policy'} has the arm ({message})")

    def _device_failed(self, reason: str) -> None:
        """Stream nothing more, pause the policy, end the recording episode as interrupted; before
        the device first worked, only say the node is waiting for it."""
        self.failure, self._retry_at = reason, time.monotonic() + RETRY_S
        if not self._device_ready:
            self._complain("device", f"waiting for the device: {reason}"
                           + ("; the operator cannot take over until it works" if self.policy else ""))
            return
        self.get_logger().error(f"device failed: {reason} -- no more targets: the driver's watchdog holds the arm; "
                                "trying the device again every second")
        if self.policy:
            with self._control_lock:
                pause = self.control in ("policy", "resuming")
                self.control = "held"
            if pause:
                self._jobs.put(lambda: self._call_policy("pause", then="held"))
        self._jobs.put(lambda: self._interrupt(reason))

    def _interrupt(self, reason: str) -> None:
        try:
            self.operator.interrupt(f"teleop device failed: {reason}")
        except services.ServiceError as exc:  # e.g. no episode was recording
            self.get_logger().info(f"no episode interrupted: {exc}")

    def _retry_device(self, now: float) -> None:
        if now < self._retry_at:
            return
        self._retry_at = now + RETRY_S
        try:
            self.source.reconnect()
            if self.policy and self.source.engaged() is None:
                self._pedal.read()
        except DeviceError as exc:
            self._complain("device", f"{'device still failing' if self._device_ready else 'waiting for the device'}: "
                                     f"{exc}")
            return
        if self._device_ready:
            self.get_logger().info(f"device back (it had failed: {self.failure}); "
                                   + ("engage it to take the arm" if self.policy else "following it again"))
        self.failure, self._fresh_start = None, True

    def _work(self) -> None:
        """Service calls in the order they were asked for, off the executor's thread."""
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except services.ServiceError as exc:  # logged; the operator can ask again
                if not self.done.is_set():
                    self.get_logger().error(str(exc))

    def close_source(self) -> None:
        """Before the node stops spinning: a hand-guided source hands the arm back to servoing."""
        if self._teaching is not None:
            self.set_teaching(False)
        self.source.close()

    def destroy_node(self):
        self.done.set()
        self._jobs.put(None)
        self._worker.join(timeout=services.SERVICE_TIMEOUT_S)
        return super().destroy_node()


def operate(nodes: list[TeleopNode]) -> None:
    """The key reader on the main thread (without a terminal: nothing to read, spin until stopped)."""
    (node,) = nodes
    try:
        if sys.stdin.isatty():
            node.read_terminal()
        else:
            node.done.wait()
    finally:
        node.close_source()


def main(args=None) -> None:
    raise SystemExit(run_nodes(lambda: [TeleopNode()], "teleop", args, foreground=operate))


if __name__ == "__main__":
    main()
