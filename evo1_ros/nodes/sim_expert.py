"""The sim episode runner: the scripted expert of `evo1_ros.sim.expert` as the operator.

It reads the world's object poses, so it runs in the sim's process (`evo1-ros record-sim`'s
graph). Episodes back to back, each: reset the sim (`<sim>/reset`; the sim's seed counter picks
the scene), start a recorder episode, stream the expert's targets, then stop the episode as
success or failure by the sim's `<sim>/success` flag. Episode control and streaming are every
operator's (nodes/operator.py).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from evo1_ros.nodes import operator, services
from evo1_ros.nodes.operator import Operator
from evo1_ros.nodes.params import Param, declare, not_positive
from evo1_ros.sim.world import SimWorld

EXPERT_WINDOW_S = 0.5  # s of plan per trajectory: a message delayed by load still leaves the driver a path

PARAMETERS = {
    **operator.PARAMETERS,
    "sim": Param("/evo1_sim", "sim node with ~/reset and ~/success"),
    "episodes": Param(1, "episodes to run, then the node is done"),
    "settle_s": Param(1.0, "sim seconds after the plan ends before success is judged"),
}


class SimExpertNode(Node):
    def __init__(self, world: SimWorld, **node_kwargs):
        """world: the SimWorld the sim node shows."""
        super().__init__("sim_expert", **node_kwargs)
        p = declare(self, PARAMETERS)
        if reason := not_positive(p["rate_hz"]):
            raise ValueError(f"rate_hz {reason}")
        self.world, self.period = world, 1.0 / p["rate_hz"]
        self.done = threading.Event()  # the episodes are stored, or the node is closing
        self.operator = Operator(self, p, "sim_expert", closing=self.done.is_set)
        self._reset = self.create_client(Trigger, f"{p['sim']}/reset")
        self._success: tuple[bool, int] = (False, 0)  # latest flag, messages seen
        self.create_subscription(Bool, f"{p['sim']}/success", self._on_success,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._thread = threading.Thread(target=self._run, args=(p["episodes"], p["settle_s"]),
                                        name="sim-expert", daemon=True)
        self._thread.start()

    def _on_success(self, msg: Bool) -> None:
        self._success = (msg.data, self._success[1] + 1)

    def _wait_success_messages(self, n: int) -> bool:
        """The sim's success flag after `n` more frame sets (each one carries the flag)."""
        seen = self._success[1] + n
        while self._success[1] < seen:
            if self.done.wait(0.01):
                raise services.ServiceError("node closing")
        return self._success[0]

    def _run(self, episodes: int, settle: float) -> None:
        from evo1_ros.sim.expert import plan_for

        try:
            for _ in range(episodes):
                scene = services.call_checked(self._reset, abort=self.done.is_set)
                self._wait_success_messages(2)  # frames of the new scene are out: record from here
                plan = plan_for(self.world)
                world = self.world
                self.operator.episode("start", note=f"sim_expert {scene}", task=world.task.name,
                                      scene=world.scene.name, seed=world.seed)
                t0, deadline, judged_at = self.world.time, time.monotonic(), None
                offsets = self.period * np.arange(1, round(EXPERT_WINDOW_S / self.period) + 1)
                while not self.done.is_set():
                    # indexed by sim time: a sim slowed by rendering load still gets the plan's motion
                    t = self.world.time - t0
                    self.operator.stream(plan.at(t + offsets), offsets)  # until the stop: every step has an action
                    if t >= plan.duration + settle:
                        judged_at = judged_at or self._success[1] + 1  # a frame set after the end
                        if self._success[1] >= judged_at:
                            break
                    deadline = max(deadline + self.period, time.monotonic())
                    time.sleep(max(0.0, deadline - time.monotonic()))
                self.operator.episode("success" if self._success[0] else "failure")
        except services.ServiceError as exc:
            if not self.done.is_set():
                self.get_logger().error(f"sim expert stopped: {exc}")
        finally:
            self.done.set()

    def destroy_node(self):
        self.done.set()
        self._thread.join(timeout=services.SERVICE_TIMEOUT_S)
        return super().destroy_node()
