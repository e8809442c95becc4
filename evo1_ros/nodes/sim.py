"""sim_node: the MuJoCo xArm6 scene standing in for the robot and its cameras, in one process.

`SimNode` renders the shared `SimWorld`'s cameras onto the topics the camera node uses
(`/<camera_namespace>/<name>/color/image_raw` + `camera_info`, rgb8), publishes `~/success`
(std_msgs/Bool, the task's detector) with every frame and resets episodes on `~/reset`
(std_srvs/Trigger): episode i after `seed` was set shows seed + i of the `task` in the `scene`
(parameters; a change applies from the next reset, and setting `seed` starts the count again).
`main` runs it beside an unmodified `xarm6_driver` whose backend is a `SimBackend` on the same
world: the world lives in this process, so `use_sim` starts `sim_node` in place of both the driver
and the camera node, and the inference node sees exactly the topics of the real setup.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from evo1_ros.nodes.camera import Intrinsics, camera_info
from evo1_ros.nodes.messages import array_to_image, to_time
from evo1_ros.sim.mjcf import CAMERAS
from evo1_ros.sim.scenes import SCENES
from evo1_ros.sim.tasks import DEFAULT_TASK, TASKS, check_settings
from evo1_ros.sim.world import SimWorld, shared_world
from evo1_ros.nodes.spin import run_nodes


class SimNode(Node):
    def __init__(self, world: SimWorld | None = None, on_reset: Callable[[], object] | None = None, **node_kwargs):
        """world: the one to show (default: the process-wide `shared_world`, made at `image_size`);
        on_reset: called after every episode reset, e.g. to re-sync the driver to the new pose."""
        super().__init__("evo1_sim", **node_kwargs)
        image_size = self.declare_parameter("image_size", 448).value
        self.fps = self.declare_parameter("fps", 15.0).value
        namespace = self.declare_parameter("camera_namespace", "camera").value
        self.seed = self.declare_parameter("seed", 0, ParameterDescriptor(
            description="the next reset's seed; each later reset adds one (setting it starts over)")).value
        self.declare_parameter("task", DEFAULT_TASK, ParameterDescriptor(
            description=f"task of the next episodes: {', '.join(TASKS)}"))
        self.declare_parameter("scene", "default", ParameterDescriptor(
            description=f"scene of the next episodes: {', '.join(SCENES)}, or a mix (mix | NAME:WEIGHT,...)"))
        reason = self._episode_settings_refused(self.get_parameter("task").value, self.get_parameter("scene").value)
        if reason:
            raise ValueError(reason)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.world = world or shared_world(image_size)
        self.on_reset = on_reset
        self.resets = 0

        # Same QoS as the camera node: reliable keep-last serves rviz/rosbag and best-effort readers.
        qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._cameras = []
        for name in CAMERAS:
            topic = f"/{namespace}/{name}/color" if namespace else f"/{name}/color"
            info = camera_info(self._intrinsics(name))
            info.header.frame_id = f"{name}_color_optical_frame"
            self._cameras.append((name, info, self.create_publisher(Image, f"{topic}/image_raw", qos),
                                  self.create_publisher(CameraInfo, f"{topic}/camera_info", qos)))
        self._success_pub = self.create_publisher(Bool, "~/success", qos)
        self.create_service(Trigger, "~/reset", self._on_reset)
        # Rendering gets a thread of its own: it owns the GL context, and a slow CPU render must not
        # hold up the executor's callbacks.
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stream, name="sim-cameras", daemon=True)
        self._thread.start()
        self.get_logger().info(f"sim cameras {CAMERAS} -> /{namespace}/<name>/color/image_raw "
                               f"({self.world.image_size} px @ {self.fps:g} Hz)")

    def _intrinsics(self, camera: str) -> Intrinsics:
        """Pinhole intrinsics of a square MuJoCo camera (fovy is the vertical field of view)."""
        size = self.world.image_size
        f = size / 2 / math.tan(math.radians(self.world.model.camera(camera).fovy[0]) / 2)
        return Intrinsics(size, size, f, f, size / 2, size / 2, "plumb_bob", (0.0,) * 5)

    def _stream(self) -> None:
        period, deadline = 1.0 / self.fps, time.monotonic()
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            try:
                self._publish_frames()
            except Exception:
                if self.context.ok():
                    raise
                return  # rclpy was shut down under us (Ctrl-C): nobody left to publish to
            deadline = max(deadline + period, time.monotonic())  # late: skip, do not burst

    def _publish_frames(self) -> None:
        with self.world.frame(self._stop.is_set):  # a lockstep world holds physics until the set is out
            if self._stop.is_set():  # destroyed while waiting: the world may be closing its renderer
                return
            # one stamp per frame set, taken when the scene is captured (render takes tens of ms)
            stamp = to_time(self.get_clock().now().nanoseconds * 1e-9)
            for name, info, image_pub, info_pub in self._cameras:
                image = array_to_image(self.world.render(name), "rgb8", stamp, info.header.frame_id)
                info.header.stamp = stamp
                image_pub.publish(image)
                info_pub.publish(info)
            self._success_pub.publish(Bool(data=self.world.success()))

    @staticmethod
    def _episode_settings_refused(task: str, scene: str) -> str | None:
        try:
            check_settings(task, scene)
        except ValueError as exc:
            return str(exc)
        return None

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        values = {p.name: p.value for p in parameters}
        reason = self._episode_settings_refused(values.get("task", self.get_parameter("task").value),
                                                values.get("scene", self.get_parameter("scene").value))
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        if "seed" in values:
            self.seed, self.resets = values["seed"], 0
        return SetParametersResult(successful=True)

    def _on_reset(self, request, response):
        seed = self.seed + self.resets
        self.resets += 1
        self.world.reset(seed, self.get_parameter("task").value, self.get_parameter("scene").value)
        if self.on_reset is not None:
            self.on_reset()
        response.success = True
        response.message = (f"episode {self.world.episode} (seed {seed}, task {self.world.task.name}, "
                            f"scene {self.world.scene.name})")
        return response

    def destroy_node(self):
        self._stop.set()
        self._thread.join(timeout=2.0)
        return super().destroy_node()


def sim_clock_node(world, sim: SimNode, context=None) -> Node:
    """A node publishing a `LockstepWorld`'s physics time (`steps_ns`) on /clock, for nodes on
    use_sim_time; the world's frames then wait until `sim` (the node filming it) sees their time.
    It is itself on the wall clock: its timer must fire while sim time stands still."""
    world.clock_ns = lambda: sim.get_clock().now().nanoseconds
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    node = Node("sim_clock", context=context)
    publisher = node.create_publisher(Clock, "/clock", 10)

    def publish() -> None:
        ns = world.steps_ns
        publisher.publish(Clock(clock=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)))

    node.create_timer(0.005, publish)
    return node


def follow_resets(sim: SimNode, driver) -> None:
    """After an episode reset the arm is at HOME: the driver must start over from there, not from
    its last command (that would drag the arm back to where the previous episode ended)."""
    sim.on_reset = driver.loop.recover


def main(args=None):
    from evo1_ros.nodes.driver import Xarm6DriverNode
    from evo1_ros.sim.backend import SimBackend

    def build():
        sim = SimNode()
        driver = Xarm6DriverNode(backend=SimBackend(sim.world))
        follow_resets(sim, driver)
        return [sim, driver]

    raise SystemExit(run_nodes(build, "evo1_sim", args))

if __name__ == "__main__":
    main()
