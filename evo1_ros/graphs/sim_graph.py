"""`SimGraph`: the xarm6_inference launch graph with `use_sim:=true`, in this process, for demo and eval.

The nodes come from `graphs.launch.xarm6_inference` — the description `ros2 launch` and
`evo1-ros launch` use — so demo and eval exercise the very graph a user launches: sim_node (sim
world + cameras + the driver on the sim backend) and the inference node, talking over DDS. On top
of the params file they override a few parameters (image size, camera rate, seed), time the
inference node's policy where the latency is spent (or seat the scripted expert in its place),
and add one `Observer` node that watches topics and calls services from outside, as a user's
tools would.

The sim world is process-wide (`shared_world`, bound to the camera thread's GL context): one
SimGraph per process.

Two clocks. By default everything runs in real time, as on a robot: the policy's latency and the
CPU's load (rendering shares the cores) are part of what is measured. With `sim_time` the world is
a `LockstepWorld` and every node runs on its clock (/clock, use_sim_time): frames are captured
exactly 1/fps apart in sim time and physics stands still while the policy computes a chunk, so the
outcome no longer depends on how fast or how loaded the machine is.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from rcl_interfaces.srv import SetParameters
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from evo1_ros.graphs.launch import create_nodes, share_directory, xarm6_inference
from evo1_ros.nodes import services
from evo1_ros.nodes.messages import image_to_rgb, stamp_seconds
from evo1_ros.nodes.spin import SpinThread
from evo1_ros.runtime.policy import predict
from evo1_ros.sim.metrics import TimedPolicy, commanded_path, largest_seam_jump, mean_abs_jerk
from evo1_ros.sim.tasks import DEFAULT_TASK

EXPERT = "expert"  # --checkpoint value that seats the privileged scripted expert in the policy's place
SIM_CHECKPOINT = Path("models") / "evo1-tiny-sim"  # the bundled sim checkpoint (models/README.md)


def default_checkpoint() -> Path | None:
    """The bundled sim checkpoint, installed (package share) or in the checkout; None where it is
    missing (an install without the models directory)."""
    for root in (share_directory(), Path(__file__).resolve().parents[2]):
        if (root / SIM_CHECKPOINT / "config.json").is_file():
            return root / SIM_CHECKPOINT
    return None


def random_tiny_checkpoint(directory: str | Path) -> Path:
    """A randomly initialised evo1-tiny (as `evo1-ros init` writes), so the graph runs before any training."""
    from evo1_ros.model.build import build_model, xarm6_normalizer
    from evo1_ros.model.checkpoint import save_checkpoint

    model, tokenizer = build_model("evo1-tiny", seed=0)
    return save_checkpoint(directory, model, tokenizer, xarm6_normalizer())


def warn_random_weights() -> None:
    bar = "!" * 100
    print(f"{bar}\n!! NO TRAINED SIM CHECKPOINT: {SIM_CHECKPOINT} was not found, so this runs a RANDOMLY "
          f"INITIALISED evo1-tiny.\n!! The graph, timing and video are real; the arm's motion is noise, not a "
          f"learned behaviour.\n!! Pass --checkpoint DIR for a trained model (or `expert` for the scripted "
          f"one).\n{bar}", file=sys.stderr, flush=True)


class Observer(Node):
    """Watches the graph like a user's tools would: camera frames (optional), the sim's success
    flag and the trajectory windows sent to the driver; calls Trigger services."""

    def __init__(self, context, camera_topics: list[str], trajectory_topic: str, sim_time: bool = False):
        super().__init__("evo1_observer", context=context,
                         parameter_overrides=[Parameter("use_sim_time", value=sim_time)])
        self.on_frame: Callable[[float, list[np.ndarray]], None] | None = None
        self._latest = [None] * len(camera_topics)  # newest Image per camera
        self._frame_stamp = -1.0
        for slot, topic in enumerate(camera_topics):
            self.create_subscription(Image, topic, lambda msg, s=slot: self._on_image(s, msg),
                                     qos_profile_sensor_data)
        self.create_subscription(Bool, "/evo1_sim/success", self._on_success, 10)
        # reliable and deep enough that no trajectory window goes missing from the jerk figure
        self.create_subscription(JointTrajectory, trajectory_topic, self._on_trajectory,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self._service_clients = {}
        # as a user changes the instruction at run time
        self.instruction = self.create_publisher(String, "/evo1_inference/instruction",
                                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.clear()

    def clear(self) -> None:
        """Forget what was seen: a new episode starts."""
        self.arrivals: list[float] = []  # receive time (`now()`) of each trajectory window
        self.windows: list[tuple[np.ndarray, np.ndarray]] = []  # trajectories sent: (times, joints)
        self.success_since: float | None = None  # when the success flag turned (and stayed) on

    def now(self) -> float:
        """Seconds on this node's ROS clock: the system clock, or sim time with `sim_time`."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, slot: int, msg) -> None:
        # sim_node stamps one capture time on all cameras: a frame set is complete when they agree
        self._latest[slot] = msg
        stamps = {stamp_seconds(m.header.stamp) if m else None for m in self._latest}
        if len(stamps) == 1 and (stamp := stamps.pop()) is not None and stamp > self._frame_stamp:
            self._frame_stamp = stamp
            if self.on_frame is not None:
                self.on_frame(stamp, [image_to_rgb(m) for m in self._latest])

    def _on_success(self, msg) -> None:
        if not msg.data:
            self.success_since = None
        elif self.success_since is None:
            self.success_since = self.now()

    def success_held(self, hold: float) -> float | None:
        """When the success flag turned on, if it has stayed on for `hold` seconds since; else None."""
        since = self.success_since  # read once: the flag's callback runs on another thread
        return since if since is not None and self.now() - since >= hold else None

    def _on_trajectory(self, msg) -> None:
        self.arrivals.append(self.now())
        if msg.points:
            start = stamp_seconds(msg.header.stamp)
            self.windows.append((np.array([start + stamp_seconds(p.time_from_start) for p in msg.points]),
                                 np.array([p.positions[:6] for p in msg.points])))

    def wait_quiet(self, quiet: float, timeout: float = 5.0) -> None:
        """Return once no trajectory window has arrived for `quiet` seconds of `now()` (or after
        `timeout` wall seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.arrivals and self.now() - self.arrivals[-1] < quiet:
            time.sleep(0.02)

    def control_rate(self) -> float | None:
        a = self.arrivals
        return (len(a) - 1) / (a[-1] - a[0]) if len(a) > 2 and a[-1] > a[0] else None

    def jerk(self, dt: float) -> float | None:
        return mean_abs_jerk(*commanded_path(self.windows), dt)

    def seam_jump(self) -> float | None:
        return largest_seam_jump(self.windows)

    def _client(self, kind, service: str):
        if service not in self._service_clients:
            self._service_clients[service] = self.create_client(kind, service)
        return self._service_clients[service]

    def trigger(self, service: str) -> str:
        """Call a std_srvs/Trigger service (the executor spins elsewhere); its message."""
        return services.call_checked(self._client(Trigger, service))

    def set_parameters(self, node: str, values: dict, timeout: float = 10.0) -> None:
        """Set parameters of `node` through its parameter service, as `ros2 param set` does."""
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        response = services.call(self._client(SetParameters, f"/{node}/set_parameters"), request, timeout)
        refused = [r.reason for r in response.results if not r.successful]
        if refused:
            raise ValueError(f"{node} refused {values}: {'; '.join(refused)}")


class PhysicsHeld:
    """A ChunkPolicy whose every `predict_chunk` runs with the lockstep world's physics held: in
    sim time the chunk takes no time at all. Everything else is the wrapped policy's."""

    def __init__(self, policy, world):
        self.policy, self.world = policy, world

    def __getattr__(self, name):
        if name == "policy":  # not yet set: never recurse into __getattr__
            raise AttributeError(name)
        return getattr(self.policy, name)

    def predict_chunk(self, images, state, instruction, rtc=None):
        with self.world.hold():
            return predict(self.policy, images, state, instruction, rtc)


EXPERT_RATE_HZ = 10.0  # the expert's chunk rows are this far apart unless a control rate is given


class SimGraph:
    """The graph running on a background executor thread; `close()` stops it."""

    def __init__(self, checkpoint: str | Path, instruction: str = "", image_size: int = 224,
                 fps: float = 10.0, control_rate: float = 0.0, seed: int = 0, inference: dict | None = None,
                 record_cameras: bool = False, sim_time: bool = False, speed: float = 1.0,
                 task: str = DEFAULT_TASK, scene: str = "default", through_sdk: bool = False):
        """checkpoint: a checkpoint directory or "expert"; instruction: "" keeps the params file's;
        seed, task, scene: the first episode's seed (each reset adds one), task and scene (sim_node's
        parameters; `select_episodes` changes them); control_rate 0: the checkpoint's action
        rate (EXPERT_RATE_HZ for the expert); inference: evo1_inference parameters to override;
        sim_time: run on the lockstep world's clock (module doc), physics at `speed` sim seconds
        per wall second between frames; through_sdk: the driver on the real arm's path, through the
        xArm SDK to an emulated controller moving the sim arm (`sim_through_sdk:=true`)."""
        if checkpoint == EXPERT:
            control_rate = control_rate or EXPERT_RATE_HZ
        arguments = {"use_sim": "true", "instruction": instruction, "control_rate": str(control_rate or ""),
                     "sim_through_sdk": str(through_sdk).lower()}
        if checkpoint != EXPERT:
            arguments["checkpoint"] = str(checkpoint)
        graph = xarm6_inference(arguments)
        overrides = {
            # on sim time the lockstep world paces the camera thread, not the wall clock
            "evo1_sim": {"image_size": image_size, "fps": 1000.0 if sim_time else float(fps), "seed": seed,
                         "task": task, "scene": scene, **({"speed": speed} if sim_time else {})},
            # A CPU-rendered frame can come a period late under load: allow ~2.5 frame periods of age
            # (never less than the params file's default) before the inference node calls it stale.
            "evo1_inference": {"max_observation_age_ms": max(200.0, 2500.0 / fps), **(inference or {})},
        }
        clock = {"use_sim_time": sim_time}
        graph = replace(graph, processes=tuple(
            replace(process, nodes=tuple(
                replace(node, parameters={**node.parameters, **clock, **overrides.get(node.name, {})})
                for node in process.nodes))
            for process in graph.processes))
        lockstep = None
        if sim_time:
            from evo1_ros.sim.lockstep import LockstepWorld

            lockstep = LockstepWorld(image_size, fps)

        def node_kwargs(spec, built):
            kwargs = {"context": self.context}
            if lockstep is not None and spec.name == "evo1_sim":
                kwargs["world"] = lockstep
            if spec.name == "evo1_inference" and checkpoint == EXPERT:
                from evo1_ros.sim.expert import ExpertPolicy

                # built after sim_node, whose world it reads; chunk rows one control period apart
                kwargs["policy"] = ExpertPolicy(built["evo1_sim"].world, action_dt=1.0 / control_rate)
            return kwargs


        # A context of our own, so callers (tests) may run other rclpy work in the same process.
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.nodes, self.observer, self._spin, self._lockstep = {}, None, None, lockstep
        try:
            self.nodes = create_nodes(graph, node_kwargs)  # the sim bringup wires resets and the clock
            self.inference, self.world = self.nodes["evo1_inference"], self.nodes["evo1_sim"].world
            # Timed where the latency is spent; its worker calls the policy only once the executor spins.
            # The node's added latency (extra_latency_ms) wraps the rest: outside the held physics,
            # so that on sim time too the world moves on while it passes.
            delayed = self.inference.policy
            self.policy = TimedPolicy(delayed.policy)
            delayed.policy = self.policy if lockstep is None else PhysicsHeld(self.policy, lockstep)
            self.observer = Observer(self.context, self.inference.camera_topics if record_cameras else [],
                                     self.inference.get_parameter("trajectory_topic").value, sim_time)
            self._spin = SpinThread((*self.nodes.values(), self.observer), self.context, "sim-graph")
        except BaseException:
            self.close()
            raise

    def select_episodes(self, task: str, scene: str, seed: int, instruction: str, timeout: float = 10.0) -> None:
        """From the next reset on: episodes seed, seed + 1, ... of `task` in `scene` (sim_node's
        parameters), and `instruction` for the policy (its topic; returns once the node has it)."""
        self.observer.set_parameters("evo1_sim", {"task": task, "scene": scene, "seed": seed})
        deadline = time.monotonic() + timeout
        while self.inference.instruction != instruction:
            if time.monotonic() > deadline:
                raise RuntimeError(f"evo1_inference did not take the instruction {instruction!r}")
            self.observer.instruction.publish(String(data=instruction))
            time.sleep(0.1)

    def reset_episode(self) -> str:
        """Next seeded episode, with inference paused across the reset so that no chunk predicted
        from the old scene is executed in the new one. Returns sim_node's word on it."""
        self.observer.trigger("/evo1_inference/pause")
        # A window sent just before the pause can still be on its way: reaching the driver after the
        # reset, it would drag the arm from the new start toward the old episode's plan (seen: the
        # can swept off the table). The driver hears the same topic, so wait until it is quiet.
        self.observer.wait_quiet(max(0.25, 3 * self.inference.dt))
        message = self.observer.trigger("/evo1_sim/reset")
        self.observer.clear()
        self.observer.trigger("/evo1_inference/resume")
        return message

    def close(self) -> None:
        if self._spin is not None:  # first: no callback may run on a destroyed node
            self._spin.stop()
        # observer, then inference (it stops sending) before the driver halts the arm, then the sim
        for node in (self.observer, *reversed(self.nodes.values())):
            if node is not None:
                node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        if self._lockstep is not None:  # after the camera thread stopped: it owns the GL context
            self._lockstep.close()
