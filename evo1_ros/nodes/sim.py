"""sim_node: the MuJoCo xArm6 scene standing in for the robot and its cameras, in one process.

`SimNode` renders the shared `SimWorld`'s cameras onto the topics the camera node uses
(`/<camera_namespace>/<name>/color/image_raw` + `camera_info`, rgb8), publishes `~/success`
(std_msgs/Bool, the task's detector) with every frame and resets episodes on `~/reset`
(std_srvs/Trigger): episode i after `seed` was set shows seed + i of the `task` in the `scene`
(parameters; a change applies from the next reset, and setting `seed` starts the count again).

`bring_up` is the one sim bringup every graph uses (`sim_node`'s main, `evo1-ros launch`, the
demo/eval graph, the recording graph): the sim node, an unmodified `xarm6_driver` whose backend
is a `SimBackend` on the same world, episode resets wired to the driver, and on a lockstep world
the node publishing its clock. The world lives in this process, so `use_sim` starts `sim_node`
in place of both the driver and the camera node, and the inference node sees exactly the topics
of the real setup. With `through_sdk` the driver takes the real arm's path instead: its
`xarm_sdk` backend, the unmodified xArm SDK and TCP, to an emulated xArm controller
(`evo1_ros.xarm_emulator`) that this process runs on a free loopback address and whose arm is
this world.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from evo1_ros.nodes.camera_stream import CAMERA_QOS, CameraStream, Intrinsics
from evo1_ros.nodes.messages import to_time
from evo1_ros.nodes.params import Param, declare, not_positive
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot.topics import CAMERA_NAMESPACE, camera_topic
from evo1_ros.sim.mjcf import CAMERAS
from evo1_ros.sim.scenes import SCENES
from evo1_ros.sim.tasks import DEFAULT_TASK, TASKS, check_settings
from evo1_ros.sim.world import SimWorld, shared_world

PARAMETERS = {
    "image_size": Param(448, "camera image width and height, px (the shared world's, when it exists already)"),
    "fps": Param(15.0, "camera frame rate, Hz (wall clock; a lockstep world paces frames in sim time)",
                 apply="_set_fps"),
    "camera_namespace": Param(CAMERA_NAMESPACE, "topic namespace of the cameras (empty: none)"),
    "seed": Param(0, "the next reset's seed; each later reset adds one (setting it starts over)", apply="_set_seed"),
    "task": Param(DEFAULT_TASK, f"task of the next episodes: {', '.join(TASKS)}", apply="_set_task"),
    "scene": Param("default", f"scene of the next episodes: {', '.join(SCENES)}, or a mix (mix | NAME:WEIGHT,...)",
                   apply="_set_scene"),
    "speed": Param(1.0, "physics pace, sim seconds per wall second (1 = real time; on a lockstep world: "
                        "between frames)"),
    "through_sdk": Param(False, "the driver reaches this world's arm as it would a real xArm: backend xarm_sdk, "
                                "through the xArm SDK to an emulated controller this process runs on a free "
                                "loopback address (false: the sim backend directly)"),
}


def _episode_settings_refused(task: str, scene: str) -> str | None:
    """Why `task` cannot run in `scene` (an unknown name, a task the scene has no objects for), or None."""
    try:
        check_settings(task, scene)
    except ValueError as exc:
        return str(exc)
    return None


class SimNode(Node):
    def __init__(self, world: SimWorld | None = None, on_reset: Callable[[], object] | None = None, **node_kwargs):
        """world: the one to show (default: the process-wide `shared_world`, made at `image_size`);
        on_reset: called after every episode reset, e.g. to re-sync the driver to the new pose."""
        super().__init__("evo1_sim", **node_kwargs)
        p = declare(self, PARAMETERS)
        if reason := not_positive(p["fps"]) or not_positive(p["speed"]) or not_positive(p["image_size"]):
            raise ValueError(f"sim_node: fps, speed and image_size {reason}")
        if reason := _episode_settings_refused(p["task"], p["scene"]):
            raise ValueError(f"sim_node: {reason}")
        self.fps, self.speed, self._next_seed = p["fps"], p["speed"], p["seed"]
        self.task, self.scene, self.through_sdk = p["task"], p["scene"], p["through_sdk"]
        self.world = world or shared_world(p["image_size"])
        self.on_reset = on_reset
        self.emulator = None  # the emulated xArm controller moving this world's arm (`through_sdk`)

        self._cameras = [CameraStream(self, name, p["camera_namespace"], self._intrinsics(name)) for name in CAMERAS]
        self._success_pub = self.create_publisher(Bool, "~/success", CAMERA_QOS)  # goes with each frame set
        self.create_service(Trigger, "~/reset", self._on_reset)
        # Rendering gets a thread of its own: it owns the GL context, and a slow CPU render must not
        # hold up the executor's callbacks.
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stream, name="sim-cameras", daemon=True)
        self._thread.start()
        self.get_logger().info(f"sim cameras {CAMERAS} -> {camera_topic('<name>', p['camera_namespace'])} "
                               f"({self.world.image_size} px @ {self.fps:g} Hz)")

    def _set_fps(self, value: float) -> str | None:
        if reason := not_positive(value):
            return reason
        self.fps = value  # the camera thread's next period
        return None

    def _set_seed(self, value: int) -> str | None:
        if value < 0:
            return f"must be 0 or more, not {value}"
        self._next_seed = value
        return None

    def _set_task(self, value: str) -> str | None:
        if reason := _episode_settings_refused(value, self.scene):
            return reason
        self.task = value  # from the next reset
        return None

    def _set_scene(self, value: str) -> str | None:
        if reason := _episode_settings_refused(self.task, value):
            return reason
        self.scene = value  # from the next reset
        return None

    def _intrinsics(self, camera: str) -> Intrinsics:
        """Pinhole intrinsics of a square MuJoCo camera (fovy is the vertical field of view)."""
        size = self.world.image_size
        f = size / 2 / math.tan(math.radians(self.world.model.camera(camera).fovy[0]) / 2)
        return Intrinsics(size, size, f, f, size / 2, size / 2, "plumb_bob", (0.0,) * 5)

    def _stream(self) -> None:
        deadline = time.monotonic()
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            try:
                self._publish_frames()
            except Exception:
                if self.context.ok():
                    raise
                return  # rclpy was shut down under us (Ctrl-C): nobody left to publish to
            deadline = max(deadline + 1.0 / self.fps, time.monotonic())  # late: skip, do not burst

    def _publish_frames(self) -> None:
        with self.world.frame(self._stop.is_set):  # a lockstep world holds physics until the set is out
            if self._stop.is_set():  # destroyed while waiting: the world may be closing its renderer
                return
            # one stamp per frame set, taken when the scene is captured (render takes tens of ms)
            stamp = to_time(self.get_clock().now().nanoseconds * 1e-9)
            for camera in self._cameras:
                camera.publish(self.world.render(camera.name), "rgb8", stamp)
            self._success_pub.publish(Bool(data=self.world.success()))

    def _on_reset(self, request, response):
        seed, self._next_seed = self._next_seed, self._next_seed + 1
        self.world.reset(seed, self.task, self.scene)
        response.message = (f"episode {self.world.episode} (seed {seed}, task {self.world.task.name}, "
                            f"scene {self.world.scene.name})")
        response.success = True
        if self.on_reset is not None:
            try:
                self.on_reset()
            except Exception as e:  # e.g. the driver could not re-sync through the SDK: say so, keep serving
                response.success = False
                response.message += f"; but re-syncing after the reset failed: {type(e).__name__}: {e}"
                self.get_logger().error(response.message)
        return response

    def destroy_node(self):
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self.emulator is not None:  # after the driver (destroyed first) let go of it
            self.emulator.stop()
        return super().destroy_node()


def sim_clock_node(world, sim: SimNode, context=None) -> Node:
    """A node publishing a `LockstepWorld`'s physics time (`steps_ns`) on /clock, for nodes on
    use_sim_time; the world's frames then wait until `sim` (the node filming it) sees their time.
    It is itself on the wall clock: its timer must fire while sim time stands still."""
    world.clock_ns = lambda: sim.get_clock().now().nanoseconds
    node = Node("sim_clock", context=context)
    publisher = node.create_publisher(Clock, "/clock", 10)

    def publish() -> None:
        ns = world.steps_ns
        publisher.publish(Clock(clock=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)))

    node.create_timer(0.005, publish)
    return node


def _emulated_controller(sim: SimNode):
    """An xArm controller emulator, started on a free loopback address, whose arm is `sim`'s world."""
    from evo1_ros.nodes.driver import READ_ONLY as DRIVER_PARAMETERS
    from evo1_ros.xarm_emulator import EmulatorConfig, XArmEmulator, free_loopback_address

    # A real control box is a real-time machine of its own. Here its threads share this process and
    # the CPU with the cameras' software rendering: at normal priority a loaded machine starves the
    # report stream for longer than the driver's report timeout and the driver stops the arm (seen
    # at load average 10 on 2 cores). So they run SCHED_FIFO (where permitted) at the servo thread's.
    priority = DRIVER_PARAMETERS["realtime_priority"][0]
    config = EmulatorConfig(ip=free_loopback_address(), arm="sim", realtime_priority=priority)
    emulator = XArmEmulator(config, sim.world, sim.speed).start()
    sim.get_logger().info(f"sim through the xArm SDK: emulated xArm controller on {emulator.config.ip} "
                          f"(ports 502, 30001-30003); the driver connects there with backend xarm_sdk")
    return emulator


def bring_up(node_kwargs: dict[str, dict] | None = None) -> dict[str, Node]:
    """sim_node's nodes by name, in start order: `evo1_sim` (a SimNode), `xarm6_driver` and, when the
    world is a `LockstepWorld`, `sim_clock`. The driver runs on a SimBackend of the same world at the
    sim's `speed`, or, when the sim node's `through_sdk` is set, on its own `xarm_sdk` backend with
    `robot_ip` at an emulated controller whose arm is that world (`sim.emulator`, stopped with the
    sim node). `node_kwargs[name]` go to that node's constructor (context, cli_args,
    parameter_overrides; the sim's `world`). After an episode reset the arm is at HOME, so the
    driver starts over from there instead of dragging the arm back to where the previous episode
    ended (through the SDK, the controller ignores motion commands from the reset until then)."""
    from evo1_ros.nodes.driver import start_driver
    from evo1_ros.sim.backend import SimBackend
    from evo1_ros.sim.lockstep import LockstepWorld

    node_kwargs = node_kwargs or {}
    sim_kwargs = node_kwargs.get("evo1_sim", {})
    sim = SimNode(**sim_kwargs)
    nodes = {"evo1_sim": sim}
    try:
        driver_kwargs = dict(node_kwargs.get("xarm6_driver", {}))
        if sim.through_sdk:
            sim.emulator = _emulated_controller(sim)
            backend = None  # the driver makes its xarm_sdk backend from its parameters, as for a real arm
            driver_kwargs["parameter_overrides"] = [
                *driver_kwargs.get("parameter_overrides", []), Parameter("backend", value="xarm_sdk"),
                Parameter("robot_ip", value=sim.emulator.config.ip)]
        else:
            backend = SimBackend(sim.world, speed=sim.speed)
        driver = start_driver(backend, **driver_kwargs)
        nodes["xarm6_driver"] = driver
        sim.on_reset = lambda: driver.loop.recover()  # the loop of the moment: a re-configure makes a new one
        if isinstance(sim.world, LockstepWorld):
            nodes["sim_clock"] = sim_clock_node(sim.world, sim, sim_kwargs.get("context"))
    except BaseException:
        for node in reversed(nodes.values()):
            node.destroy_node()
        raise
    return nodes


def main(args=None):
    raise SystemExit(run_nodes(lambda: list(bring_up().values()), "evo1_sim", args))


if __name__ == "__main__":
    main()
