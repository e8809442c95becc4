"""`evo1-ros launch`: the xarm6_inference node graph, described once for two launchers.

`xarm6_inference(arguments)` turns launch arguments (strings, as `name:=value` gives them) into the
processes to start: executable, and per node its name, class and parameter overrides. Every node
loads the params file (config/evo1.yaml) first and its overrides on top.

- `launch/xarm6_inference.launch.py` maps each process onto a launch_ros `Node` (`ros2 launch`).
- `evo1-ros launch xarm6_inference [name:=value ...]` (`run` below) builds the same node classes
  in this one process on one executor, for machines without `ros2 launch` (PyPI has no
  `launch`). robot_state_publisher and rviz2 are C++ programs of a ROS install: it skips them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from evo1_ros.robot import topics

PACKAGE = "evo1_ros"

ARGUMENTS = {  # name: (default, description); an empty value keeps the params file's setting
    "robot_ip": ("", "xArm controller address; empty (without use_sim) = dry run on the fake backend"),
    "use_sim": ("false", "the MuJoCo sim (sim_node) stands in for the arm and the cameras"),
    "sim_through_sdk": ("false", "with use_sim: the driver reaches the sim arm as it would a real xArm, backend "
                                 "xarm_sdk through the xArm SDK to an emulated controller in sim_node's process"),
    "checkpoint": ("", "Evo-1 checkpoint directory (empty: the params file's)"),
    "instruction": ("", "language instruction (empty: the params file's)"),
    "cameras": ("", "camera names in policy view-slot order, each optionally name:serial, e.g. "
                    "base:_123456789012,wrist:_234567890123 (empty: the params file's)"),
    "control_rate": ("", "inference control rate in Hz (empty: the params file's)"),
    "rviz": ("false", "start robot_state_publisher (robot and ghost arm) and rviz2"),
    "params_file": ("", "ROS 2 parameters file (empty: the package's config/evo1.yaml)"),
}

INFERENCE = "evo1_ros.nodes.inference:InferenceNode"
DRIVER = "evo1_ros.nodes.driver:start_driver"  # the driver, taken to active
CAMERA = "evo1_ros.nodes.camera:CameraNode"
SIM = "evo1_ros.nodes.sim:SimNode"
SIM_BRINGUP = "evo1_ros.nodes.sim:bring_up"
GHOST_PREFIX = "ghost/"


@dataclass(frozen=True)
class NodeSpec:
    name: str  # the node's name, also its section in the params file
    plugin: str  # "module:callable" that `evo1-ros launch` builds it with; "" = a ROS install's program
    parameters: dict = field(default_factory=dict)  # on top of the params file


@dataclass(frozen=True)
class ProcessSpec:
    executable: str
    nodes: tuple[NodeSpec, ...]
    package: str = PACKAGE
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    # "module:function" building all the process's nodes together, as its executable does (they
    # share state: the sim world), from each node's constructor kwargs by name; "" = each node
    # from its own plugin class
    bring_up: str = ""

    def parameter_files(self, params_file: str, directory: str | Path) -> list[str]:
        """The params file, then one written to `directory` with this process's overrides."""
        sections = {node.name: {"ros__parameters": node.parameters} for node in self.nodes if node.parameters}
        if not sections:
            return [params_file]
        path = Path(directory) / f"{self.nodes[0].name}_overrides.yaml"
        path.write_text(yaml.safe_dump(sections))
        return [params_file, str(path)]


@dataclass(frozen=True)
class Graph:
    params_file: str
    processes: tuple[ProcessSpec, ...]
    notes: tuple[str, ...]  # what the launcher should tell the user

    def find(self, name: str) -> NodeSpec:
        return next(node for process in self.processes for node in process.nodes if node.name == name)


def share_directory() -> Path:
    """The package's share directory: installed (ament index, or pip's data_files), else the checkout."""
    candidates = [Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / PACKAGE]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.insert(0, Path(get_package_share_directory(PACKAGE)))
    except (ImportError, LookupError, OSError):  # no ROS install, or this package is not in its index
        pass
    return next((path for path in candidates if (path / "config" / "evo1.yaml").is_file()), candidates[-1])


def parse_arguments(items: list[str]) -> dict[str, str]:
    """`name:=value` strings -> {name: value}, as `ros2 launch` takes them."""
    values = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or name not in ARGUMENTS:
            raise ValueError(f"expected name:=value with name one of {', '.join(ARGUMENTS)}; got {item!r}")
        values[name] = value
    return values


def _flag(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"{name}:={value}: expected true or false")
    return value.lower() in ("true", "1")


def _section(params: dict, node: str) -> dict:
    return (params.get(node) or params.get(f"/{node}") or {}).get("ros__parameters", {})


def xarm6_inference(arguments: dict[str, str]) -> Graph:
    """The processes of xarm6_inference.launch.py for these launch arguments (unset ones take defaults)."""
    args = {name: default for name, (default, _) in ARGUMENTS.items()}
    args.update(arguments)
    params_file = args["params_file"] or str(share_directory() / "config" / "evo1.yaml")
    params = yaml.safe_load(Path(params_file).read_text()) or {}
    use_sim, rviz = _flag("use_sim", args["use_sim"]), _flag("rviz", args["rviz"])
    through_sdk = _flag("sim_through_sdk", args["sim_through_sdk"])
    if through_sdk and not use_sim:
        raise ValueError("sim_through_sdk:=true needs use_sim:=true (a real arm is reached through the SDK "
                         "with robot_ip:=...)")
    notes = []

    camera_params = _section(params, "evo1_camera")
    entries = [entry.split(":", 1) for entry in args["cameras"].split(",") if entry]
    names = [entry[0] for entry in entries] or list(camera_params.get("names", ["base", "wrist"]))
    serials = [entry[1] for entry in entries if len(entry) == 2]
    if serials and len(serials) != len(entries):
        raise ValueError(f"cameras:={args['cameras']}: give a serial for every camera or for none")
    namespace = _section(params, "evo1_sim" if use_sim else "evo1_camera").get("camera_namespace",
                                                                               topics.CAMERA_NAMESPACE)
    camera_topics = [topics.camera_topic(name, namespace) for name in names]

    inference = {"camera_topics": camera_topics}
    for name in ("checkpoint", "instruction"):
        if args[name]:
            inference[name] = args[name]
    if args["control_rate"]:
        try:
            inference["control_rate_hz"] = float(args["control_rate"])
        except ValueError:
            raise ValueError(f"control_rate:={args['control_rate']}: expected a number (Hz)") from None

    processes = []
    if use_sim:
        from evo1_ros.sim.mjcf import CAMERAS  # plain Python: MuJoCo itself is not imported here

        if unknown := [name for name in names if name not in CAMERAS]:
            raise ValueError(f"the sim has cameras {list(CAMERAS)}; cameras {unknown} do not exist there")
        # sim_node runs the driver beside the sim, sharing its world: one process, two nodes. Through
        # the SDK, the process also runs the emulated controller the driver connects to (robot_ip is
        # the free loopback address it finds).
        processes.append(ProcessSpec("sim_node", (
            NodeSpec("evo1_sim", SIM, {"through_sdk": through_sdk}),
            NodeSpec("xarm6_driver", DRIVER, {"backend": "xarm_sdk" if through_sdk else "sim"})), bring_up=SIM_BRINGUP))
    else:
        if serials or camera_params.get("serials"):
            camera = {"names": names, **({"serials": serials} if serials else {})}
            processes.append(ProcessSpec("camera_node", (NodeSpec("evo1_camera", CAMERA, camera),)))
        else:
            notes.append(f"no camera serials (cameras:=name:serial,... or evo1_camera.serials in {params_file}): "
                         f"not starting the camera node; expecting images on {camera_topics} from elsewhere "
                         "(e.g. realsense2_camera)")
        robot_ip = args["robot_ip"] or _section(params, "xarm6_driver").get("robot_ip", "")
        if _section(params, "evo1_inference").get("use_follow_joint_trajectory", False):
            # Two programs commanding one arm would fight: xarm_ros2 (launched by the user) drives it.
            notes.append("use_follow_joint_trajectory: xarm_ros2's controller drives the arm; "
                         "not starting xarm6_driver")
        else:
            if not robot_ip:
                notes.append("no robot_ip: dry run on the fake backend (a kinematic arm; nothing real moves)")
            driver = {"backend": "xarm_sdk", "robot_ip": robot_ip} if robot_ip else {"backend": "fake"}
            processes.append(ProcessSpec("xarm6_driver", (NodeSpec("xarm6_driver", DRIVER, driver),)))
    processes.append(ProcessSpec("inference_node", (NodeSpec("evo1_inference", INFERENCE, inference),)))

    if rviz:
        from evo1_ros.robot.description import xarm6_urdf

        joint_states = _section(params, "xarm6_driver").get("joint_states_topic", topics.JOINT_STATES)
        processes += [
            ProcessSpec("robot_state_publisher",
                        (NodeSpec("robot_state_publisher", "", {"robot_description": xarm6_urdf()}),),
                        package="robot_state_publisher", remappings=(("joint_states", joint_states),)),
            # The ghost arm: the predicted chunk's final pose, as a translucent second robot in rviz.
            ProcessSpec("robot_state_publisher",
                        (NodeSpec("ghost_state_publisher", "",
                                  {"robot_description": xarm6_urdf(GHOST_PREFIX, "0.2 0.8 0.3 1")}),),
                        package="robot_state_publisher",
                        remappings=(("joint_states", "/evo1_inference/predicted_joint_states"),
                                    ("robot_description", f"/{GHOST_PREFIX}robot_description"))),
            ProcessSpec("rviz2", (NodeSpec("rviz2", ""),), package="rviz2",
                        arguments=("-d", str(share_directory() / "config" / "evo1.rviz"))),
        ]
    return Graph(params_file, tuple(processes), tuple(notes))


GRAPHS = {"xarm6_inference": xarm6_inference}


# --- `evo1-ros launch`: the graph in one process ------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", choices=sorted(GRAPHS), help="which graph (as launch/<graph>.launch.py)")
    parser.add_argument("arguments", nargs="*", metavar="name:=value", help="launch arguments (below)")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "launch arguments (default):\n" + "\n".join(
        f"  {name} ({default!r}): {text}" for name, (default, text) in ARGUMENTS.items())
    parser.add_argument("-p", "--print", action="store_true",
                        help="print the processes and nodes, start nothing (give it before the graph name)")


def in_process(process: ProcessSpec) -> bool:
    """Whether `evo1-ros launch` can build this process's nodes (not a ROS install's C++ program)."""
    return all(node.plugin for node in process.nodes)


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def create_nodes(graph: Graph, node_kwargs: Callable[[NodeSpec, dict], dict] | None = None) -> dict:
    """Build the graph's nodes in this process, in order, each on the params file + its overrides
    (rclpy must be initialised); a process with a `bring_up` is built by it, as its executable
    builds it. `node_kwargs(spec, built_so_far)` adds constructor arguments (context, a policy
    object, ...). On a failure the nodes built so far are destroyed and a RuntimeError names the
    node that failed."""
    import tempfile

    built = {}
    try:
        with tempfile.TemporaryDirectory(prefix="evo1_ros_launch_") as tmp:
            for process in filter(in_process, graph.processes):
                cli_args = ["--ros-args"]
                for params_file in process.parameter_files(graph.params_file, tmp):
                    cli_args += ["--params-file", params_file]
                for source, target in process.remappings:
                    cli_args += ["-r", f"{source}:={target}"]
                kwargs = {spec.name: {"cli_args": cli_args + ["-r", f"__node:={spec.name}"],
                                      **(node_kwargs(spec, built) if node_kwargs else {})} for spec in process.nodes}
                what = process.executable
                try:
                    if process.bring_up:
                        built.update(_load(process.bring_up)(kwargs))
                    else:
                        for spec in process.nodes:
                            what = spec.name
                            built[spec.name] = _load(spec.plugin)(**kwargs[spec.name])
                except Exception as e:  # a missing checkpoint or camera: say which node
                    raise RuntimeError(f"{what} failed to start: {type(e).__name__}: {e}") from e
    except BaseException:
        for node in reversed(built.values()):
            node.destroy_node()
        raise
    return built


def run(args) -> int:
    try:
        graph = GRAPHS[args.graph](parse_arguments(args.arguments))
    except (ValueError, OSError) as e:
        print(f"evo1-ros launch: {e}", file=sys.stderr)
        return 2
    notes = list(graph.notes) + [f"skipping {p.package}/{p.executable}: it needs a ROS 2 install (there, use "
                                 "ros2 launch)" for p in graph.processes if not in_process(p)]
    for note in notes:
        print(f"evo1-ros launch: {note}", file=sys.stderr)
    if args.print:
        for process in graph.processes:
            for node in process.nodes:
                print(f"{process.package}/{process.executable}: {node.name} {node.plugin or '(ROS install)'} "
                      f"{ {k: v for k, v in node.parameters.items() if k != 'robot_description'} }")
        return 0

    from evo1_ros.nodes.spin import run_nodes

    return run_nodes(lambda: list(create_nodes(graph).values()), "evo1_ros_launch")
