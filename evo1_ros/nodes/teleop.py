"""teleop: a person moves the arm through an input source and runs the recorder's episodes.

Sources (`source` parameter; evo1_ros.teleop.sources, where a new device is added):
- `keyboard`: jog the joint target (joint or Cartesian keys, see `evo1_ros.teleop.keys`) from the
  measured pose and stream it to the driver on `trajectory_topic`.
- `teaching`: the xArm's joint-teaching mode, the arm moved by hand. The node asks the driver for
  it (`<driver>/set_teaching`, std_srvs/SetBool: true on start, false on the way out: the driver
  stays the only owner of the arm) and streams the guided pose the driver publishes on
  `joint_states_topic` as the commanded trajectory, so a demonstration records "commanded" =
  guided positions; the gripper follows its keys.

Episode control by key (b s f d), as every operator does it (nodes/operator.py). Keys come from
this process's terminal; the key reader runs on the main thread while the node spins.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import replace

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool

from evo1_ros.nodes import operator, services
from evo1_ros.nodes.messages import MessageError, joint_positions
from evo1_ros.nodes.operator import Operator
from evo1_ros.nodes.params import Param, declare, not_positive
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot import topics
from evo1_ros.robot.xarm6 import JOINT_STATE_NAMES
from evo1_ros.teleop.keys import HELP, KEYMAP, JogSteps
from evo1_ros.teleop.sources import SOURCES, ArmTarget, KeyboardSource

PARAMETERS = {
    **operator.PARAMETERS,
    "source": Param("keyboard", f"operator input: {' | '.join(SOURCES)}"),
    "joint_states_topic": Param(topics.JOINT_STATES, "measured joints (teaching: the guided pose)"),
    "driver": Param("/xarm6_driver", "the driver node, whose ~/set_teaching hand-guided sources call"),
    "joint_step": Param(JogSteps.joint, "keyboard: rad per joint key press", apply="_set_joint_step"),
    "linear_step": Param(JogSteps.linear, "keyboard: m per Cartesian key press", apply="_set_linear_step"),
    "angular_step": Param(JogSteps.angular, "keyboard: rad per yaw key press", apply="_set_angular_step"),
}


class TeleopNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("teleop", **node_kwargs)
        p = declare(self, PARAMETERS)
        if p["source"] not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, not {p['source']!r}")
        if reason := not_positive(p["rate_hz"]):
            raise ValueError(f"rate_hz {reason}")
        self.source = SOURCES[p["source"]]()
        if isinstance(self.source, KeyboardSource):
            self.source.steps = JogSteps(p["joint_step"], p["linear_step"], p["angular_step"])
        self.period = 1.0 / p["rate_hz"]
        self.done = threading.Event()  # the node is closing
        self.target: ArmTarget | None = None  # being streamed
        self._measured: ArmTarget | None = None
        self.operator = Operator(self, p, closing=self.done.is_set)
        self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_state, 10)
        # Wall-clock timer even under use_sim_time: the driver's watchdog counts wall time.
        self.create_timer(self.period, self._stream_target, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._teaching = None
        if self.source.hand_guided:
            self._teaching = self.create_client(SetBool, f"{p['driver']}/set_teaching")
            # a blocking call: not on the executor's thread, which has to deliver its answer
            threading.Thread(target=self.set_teaching, args=(True,), name="teleop-teaching", daemon=True).start()
        self.get_logger().info(f"teleop source {p['source']}, streaming to {p['trajectory_topic']}")

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
        """One key press; from the key reader's thread, never a callback (episode keys block)."""
        command = KEYMAP.get(key)
        if command is None:
            return
        if command.kind == "help":
            print(HELP, flush=True)
        elif command.kind == "episode":
            try:
                self.operator.episode(command.arg)
            except services.ServiceError as exc:  # logged; the operator can press again
                self.get_logger().error(str(exc))
        elif note := self.source.press(command):
            self.get_logger().info(note)

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
        try:
            q = joint_positions(msg, JOINT_STATE_NAMES)
        except MessageError as exc:
            self.get_logger().warning(f"joint state ignored: {exc}", throttle_duration_sec=5.0)
            return
        if self._measured is None:
            self.get_logger().info("joint target starts from the measured pose; press h for help")
        self._measured = ArmTarget(q[:6], float(q[6]))

    def _stream_target(self) -> None:
        if self._measured is not None and (target := self.source.next_target(self._measured)) is not None:
            self.target = target
            self.operator.stream(np.append(target.joints, target.gripper)[None], [self.period])

    def close_source(self) -> None:
        """Before the node stops spinning: a hand-guided source hands the arm back to servoing."""
        if self._teaching is not None:
            self.set_teaching(False)
        self.source.close()

    def destroy_node(self):
        self.done.set()
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
