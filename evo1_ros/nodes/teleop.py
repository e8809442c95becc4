"""teleop: an operator moves the arm and runs the recorder's episodes.

Sources (`source` parameter):
- `keyboard`: jog the joint target (joint or Cartesian keys, see `evo1_ros.teleop.keys`) from the
  measured pose and stream it to the driver on `trajectory_topic`.
- `teaching`: the xArm in mode 2 (joint teaching: the arm is moved by hand). The controller takes
  no servo targets in that mode, so this source runs *instead of* `xarm6_driver`: it holds the SDK
  connection itself, publishes the guided pose on `joint_states_topic` and republishes it as the
  commanded trajectory, so demonstrations record "commanded" = guided positions. Gripper on keys.
- `sim_expert`: the scripted expert of `evo1_ros.sim.expert` is the operator. Same process as the
  sim (it reads the world's object poses). Episodes back to back, each: reset the sim (`<sim>/reset`;
  the sim's seed counter picks the scene), start a recorder episode, stream the expert's targets,
  then stop the episode as success or failure by the sim's `<sim>/success` flag.

Episode control, by key (b s f d) or by the sim expert: the recorder's std_srvs/Trigger services
`<recorder>/start|stop_success|stop_fail|discard`. Before each start the node sets the recorder's
`instruction` and `operator_note` parameters (they travel with the bag) and publishes the
instruction on `instruction_topic`.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import rclpy
from rcl_interfaces.srv import SetParameters
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from evo1_ros.nodes.messages import MessageError, joint_positions, to_duration
from evo1_ros.robot import xarm6
from evo1_ros.teleop.keys import HELP, KEYMAP, JogSteps, jog

NAMES = [*xarm6.JOINT_NAMES, xarm6.GRIPPER_JOINT]
SOURCES = ("keyboard", "teaching", "sim_expert")
SERVICE_TIMEOUT_S = 10.0
EXPERT_WINDOW_S = 0.5  # s of plan per trajectory: a message delayed by load still leaves the driver a path

PARAMETERS = {  # name: (default, description)
    "source": ("keyboard", "keyboard | teaching | sim_expert"),
    "instruction": ("", "instruction of every episode (set on the recorder at each start)"),
    "operator_note": ("", "note stored with each episode (sim_expert adds the sim's seed)"),
    "recorder": ("/recorder", "recorder node: its services and instruction/operator_note parameters"),
    "trajectory_topic": ("/evo1/joint_trajectory", "trajectory_msgs/JointTrajectory to the driver"),
    "joint_states_topic": ("/joint_states", "measured joints (teaching: published here)"),
    "instruction_topic": ("/evo1/instruction", "std_msgs/String published at each episode start"),
    "rate_hz": (30.0, "target stream rate, wall clock (the driver's watchdog wants >= 10 Hz)"),
    "joint_step": (JogSteps.joint, "keyboard: rad per joint key press"),
    "linear_step": (JogSteps.linear, "keyboard: m per Cartesian key press"),
    "angular_step": (JogSteps.angular, "keyboard: rad per yaw key press"),
    "robot_ip": ("", "teaching: xArm controller address"),
    "sim": ("/evo1_sim", "sim_expert: sim node with ~/reset and ~/success"),
    "episodes": (1, "sim_expert: episodes to run, then the node is done"),
    "settle_s": (1.0, "sim_expert: sim seconds after the plan ends before success is judged"),
}


class TeleopNode(Node):
    def __init__(self, world=None, api_class=None, **node_kwargs):
        """world: the SimWorld the sim node shows (`sim_expert` only);
        api_class: XArmAPI stand-in for `teaching` (tests)."""
        super().__init__("teleop", **node_kwargs)
        for key, (default, _) in PARAMETERS.items():
            self.declare_parameter(key, default)
        p = {key: self.get_parameter(key).value for key in PARAMETERS}
        if p["source"] not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {p['source']!r}")
        self.source, self.period = p["source"], 1.0 / p["rate_hz"]
        self.steps = JogSteps(p["joint_step"], p["linear_step"], p["angular_step"])
        self.done = threading.Event()  # sim_expert finished its episodes, or the node is closing
        self.target: tuple[np.ndarray, float] | None = None  # (joints, gripper) being streamed

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._trajectory_pub = self.create_publisher(JointTrajectory, p["trajectory_topic"], reliable)
        self._instruction_pub = self.create_publisher(String, p["instruction_topic"], reliable)
        # called from the key reader's or the expert's thread, never from a callback (see _call)
        self._recorder = {name: self.create_client(Trigger, f"{p['recorder']}/{name}")
                          for name in ("start", "stop_success", "stop_fail", "discard")}
        self._recorder_params = self.create_client(SetParameters, f"{p['recorder']}/set_parameters")
        # Wall-clock timer even under use_sim_time: the driver's watchdog counts wall time.
        steady = Clock(clock_type=ClockType.STEADY_TIME)

        if self.source == "keyboard":
            self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_state, 10)
            self.create_timer(self.period, self._stream_target, clock=steady)
        elif self.source == "teaching":
            self.backend = self._connect_teaching(p["robot_ip"], api_class)
            self._joint_state_pub = self.create_publisher(JointState, p["joint_states_topic"], 10)
            self.create_timer(self.period, self._republish_guided, clock=steady)
        else:
            if world is None:
                raise ValueError("source sim_expert reads the sim's world: run it in the sim's process "
                                 "(evo1-ros record-sim), not as a node of its own")
            self.world = world
            self._reset = self.create_client(Trigger, f"{p['sim']}/reset")
            self._success: tuple[bool, int] = (False, 0)  # latest flag, messages seen
            self.create_subscription(Bool, f"{p['sim']}/success", self._on_success, reliable)
            self._expert = threading.Thread(target=self._run_expert, args=(p["episodes"], p["settle_s"]),
                                            name="sim-expert", daemon=True)
            self._expert.start()
        self.get_logger().info(f"teleop source {self.source}, streaming to {p['trajectory_topic']}")

    # --- episodes -------------------------------------------------------------------------------

    def _call(self, client, request, what: str):
        """Blocking service call; from any thread but the executor's (it completes the future)."""
        if not client.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S):
            raise RuntimeError(f"{what}: service {client.srv_name} not available")
        future = client.call_async(request)
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        deadline = time.monotonic() + SERVICE_TIMEOUT_S
        while not answered.wait(0.05):
            if self.done.is_set():
                raise RuntimeError(f"{what}: node closing")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {client.srv_name} did not answer")
        return future.result()

    def episode(self, action: str, note: str = "") -> Trigger.Response:
        """Recorder episode control: start | stop_success | stop_fail | discard."""
        if action == "start":
            text = self.get_parameter("instruction").value
            note = " ".join(filter(None, [self.get_parameter("operator_note").value, note]))
            request = SetParameters.Request(parameters=[Parameter("instruction", value=text).to_parameter_msg(),
                                                        Parameter("operator_note", value=note).to_parameter_msg()])
            results = self._call(self._recorder_params, request, "set recorder parameters").results
            refused = [r.reason for r in results if not r.successful]
            if refused:
                raise RuntimeError(f"recorder refused its parameters: {refused}")
        response = self._call(self._recorder[action], Trigger.Request(), f"recorder {action}")
        if action == "start" and response.success:
            self._instruction_pub.publish(String(data=text))
        log = self.get_logger().info if response.success else self.get_logger().error
        log(f"recorder {action}: {response.message}")
        return response

    # --- keyboard and teaching ------------------------------------------------------------------

    def handle_key(self, key: str) -> None:
        command = KEYMAP.get(key)
        if command is None:
            return
        if command.kind == "help":
            print(HELP, flush=True)
        elif command.kind == "scale":
            self.steps = self.steps.scaled(command.sign)
            self.get_logger().info(f"jog steps {self.steps}")
        elif command.kind == "episode":
            self._try(lambda: self.episode(command.arg))
        elif self.source == "teaching":
            if command.kind == "gripper":
                self._try(lambda: self._teaching_gripper(command.arg))
            else:
                self.get_logger().info("teaching mode: move the arm by hand (only gripper keys apply)")
        elif self.target is None:
            self.get_logger().warning("no joint state yet: nothing to jog from")
        else:
            self.target = jog(command, *self.target, self.steps)

    def _try(self, action) -> None:
        """Run a key's action; a refused call is logged, and the operator can press again."""
        try:
            action()
        except RuntimeError as exc:
            self.get_logger().error(str(exc))

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

    def _on_joint_state(self, msg: JointState) -> None:
        if self.target is None:  # jogging starts from where the arm is
            try:
                self.target = (joint_positions(msg, xarm6.JOINT_NAMES), float(joint_positions(msg, NAMES[6:])[0]))
            except MessageError as exc:
                self.get_logger().warning(f"joint state ignored: {exc}", throttle_duration_sec=5.0)
                return
            self.get_logger().info("joint target initialised from the measured pose; press h for help")

    def _stream_target(self) -> None:
        if self.target is not None:
            self._publish(np.append(*self.target)[None], [self.period])

    def _connect_teaching(self, robot_ip: str, api_class):
        from evo1_ros.robot.backends import XArmSdkBackend

        backend = XArmSdkBackend(robot_ip, api_class=api_class)
        state = backend.connect()  # the driver backend's bring-up: clear errors, enable, gripper
        self._check(backend.arm.set_mode(2), "set_mode(2)")  # joint teaching (hand-guiding)
        self._check(backend.arm.set_state(0), "set_state(0)")
        self.gripper = state.gripper  # the commanded gripper, what the trajectory carries
        return backend

    def _teaching_gripper(self, drive: float) -> None:
        # the controller takes gripper commands in any mode; arm motion is what mode 2 hands over
        self._check(self.backend.arm.set_gripper_position(xarm6.gripper_to_sdk(drive), wait=False),
                    "set_gripper_position")
        self.gripper = float(drive)

    @staticmethod
    def _check(code: int, action: str) -> None:
        from evo1_ros.robot.backends import describe_code

        if code != 0:
            raise RuntimeError(f"{action}: {describe_code(code)}")

    def _republish_guided(self) -> None:
        state = self.backend.read_state()
        now = self.get_clock().now().to_msg()
        msg = JointState(name=NAMES, position=[*map(float, state.positions), float(state.gripper)])
        msg.header.stamp = now
        self._joint_state_pub.publish(msg)
        self._publish(np.append(state.positions, self.gripper)[None], [0.0], now)

    # --- sim expert -----------------------------------------------------------------------------

    def _on_success(self, msg: Bool) -> None:
        self._success = (msg.data, self._success[1] + 1)

    def _wait_success_messages(self, n: int) -> bool:
        """The sim's success flag after `n` more frame sets (each one carries the flag)."""
        seen = self._success[1] + n
        while self._success[1] < seen:
            if self.done.wait(0.01):
                raise RuntimeError("node closing")
        return self._success[0]

    def _run_expert(self, episodes: int, settle: float) -> None:
        from evo1_ros.sim.expert import plan_for

        try:
            for _ in range(episodes):
                scene = self._call(self._reset, Trigger.Request(), "sim reset").message
                self._wait_success_messages(2)  # frames of the new scene are out: record from here
                plan = plan_for(self.world)
                if not self.episode("start", note=f"sim_expert {scene}").success:
                    break
                t0, deadline, judged_at = self.world.time, time.monotonic(), None
                offsets = self.period * np.arange(1, round(EXPERT_WINDOW_S / self.period) + 1)
                while not self.done.is_set():
                    # indexed by sim time: a sim slowed by rendering load still gets the plan's motion
                    t = self.world.time - t0
                    self._publish(plan.at(t + offsets), offsets)  # until the stop: every step has an action
                    if t >= plan.duration + settle:
                        judged_at = judged_at or self._success[1] + 1  # a frame set after the end
                        if self._success[1] >= judged_at:
                            break
                    deadline = max(deadline + self.period, time.monotonic())
                    time.sleep(max(0.0, deadline - time.monotonic()))
                success = self._success[0]
                self.episode("stop_success" if success else "stop_fail")
        except RuntimeError as exc:
            if not self.done.is_set():
                self.get_logger().error(f"sim expert stopped: {exc}")
        finally:
            self.done.set()

    # --- output ---------------------------------------------------------------------------------

    def _publish(self, points: np.ndarray, offsets, stamp=None) -> None:
        msg = JointTrajectory(joint_names=NAMES)
        msg.header.stamp = stamp or self.get_clock().now().to_msg()
        msg.points = [JointTrajectoryPoint(positions=[*map(float, point)], time_from_start=to_duration(offset))
                      for point, offset in zip(points, offsets)]
        self._trajectory_pub.publish(msg)

    def destroy_node(self):
        self.done.set()
        if self.source == "sim_expert":
            self._expert.join(timeout=SERVICE_TIMEOUT_S)
        elif self.source == "teaching":
            self.backend.arm.set_mode(0)  # leave hand-guiding: the arm holds where it was put
            self.backend.arm.set_state(0)
            self.backend.close()
        return super().destroy_node()


def main(args=None) -> None:
    rclpy.init(args=args)
    try:
        node = TeleopNode()
    except (ValueError, RuntimeError) as exc:  # configuration or connection: one line, no traceback
        rclpy.logging.get_logger("teleop").fatal(str(exc))
        rclpy.try_shutdown()
        sys.exit(1)
    executor = SingleThreadedExecutor()  # why one thread: nodes/spin.py
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        if node.source != "sim_expert" and sys.stdin.isatty():
            node.read_terminal()
        else:
            node.done.wait()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
