"""The xarm6_inference graph that both launchers start: which nodes, with which parameters."""

from pathlib import Path

import pytest
import yaml

from evo1_ros.cli import build_parser
from evo1_ros.graphs.launch import parse_arguments, xarm6_inference

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"


def nodes(graph):
    return {node.name: (process.executable, node) for process in graph.processes for node in process.nodes}


def test_real_robot_with_cameras():
    graph = xarm6_inference(parse_arguments([
        "robot_ip:=192.168.1.208", "cameras:=wrist:_123456789012,base:_234567890123", "checkpoint:=/ckpt",
        "instruction:=stack the cups", "control_rate:=15"]))
    found = nodes(graph)
    assert set(found) == {"evo1_camera", "xarm6_driver", "evo1_inference"}
    assert found["xarm6_driver"][1].parameters == {"backend": "xarm_sdk", "robot_ip": "192.168.1.208"}
    assert found["evo1_camera"][1].parameters == {"names": ["wrist", "base"],
                                                  "serials": ["_123456789012", "_234567890123"]}
    # the cameras' order is the policy's view-slot order
    assert found["evo1_inference"][1].parameters == {
        "camera_topics": ["/camera/wrist/color/image_raw", "/camera/base/color/image_raw"],
        "checkpoint": "/ckpt", "instruction": "stack the cups", "control_rate_hz": 15.0}
    assert {executable for executable, _ in found.values()} == {"camera_node", "xarm6_driver", "inference_node"}
    assert graph.notes == ()


def test_defaults_are_a_dry_run_that_keeps_the_params_file():
    graph = xarm6_inference({})
    found = nodes(graph)
    assert set(found) == {"xarm6_driver", "evo1_inference"}  # no serials: images come from elsewhere
    assert found["xarm6_driver"][1].parameters == {"backend": "fake"}
    # unset arguments override nothing: checkpoint, instruction and rate stay the params file's
    assert found["evo1_inference"][1].parameters == {
        "camera_topics": ["/camera/base/color/image_raw", "/camera/wrist/color/image_raw"]}
    assert graph.params_file == str(CONFIG / "evo1.yaml")
    assert any("fake backend" in note for note in graph.notes)
    assert any("not starting the camera node" in note for note in graph.notes)


def test_sim_replaces_cameras_and_driver_with_one_process():
    graph = xarm6_inference({"use_sim": "true", "cameras": "base", "robot_ip": "10.0.0.1"})
    (sim, inference) = graph.processes
    assert sim.executable == "sim_node"
    assert [node.name for node in sim.nodes] == ["evo1_sim", "xarm6_driver"]  # sim first: it makes the world
    assert sim.nodes[1].parameters == {"backend": "sim"}
    assert inference.nodes[0].parameters["camera_topics"] == ["/camera/base/color/image_raw"]
    with pytest.raises(ValueError, match="do not exist there"):
        xarm6_inference({"use_sim": "true", "cameras": "base,side"})


def test_sim_through_the_sdk_runs_the_driver_on_xarm_sdk_beside_the_sim():
    graph = xarm6_inference({"use_sim": "true", "sim_through_sdk": "true"})
    (sim, inference) = graph.processes
    assert (sim.executable, sim.bring_up) == ("sim_node", "evo1_ros.nodes.sim:bring_up")  # one process, one bringup
    assert [(node.name, node.parameters) for node in sim.nodes] == [
        ("evo1_sim", {"through_sdk": True}), ("xarm6_driver", {"backend": "xarm_sdk"})]  # robot_ip: the bringup's
    assert inference.nodes[0].name == "evo1_inference"
    direct = xarm6_inference({"use_sim": "true"}).processes[0]
    assert [node.parameters for node in direct.nodes] == [{"through_sdk": False}, {"backend": "sim"}]
    with pytest.raises(ValueError, match="needs use_sim:=true"):
        xarm6_inference({"sim_through_sdk": "true"})
    with pytest.raises(ValueError, match="expected true or false"):
        xarm6_inference({"use_sim": "true", "sim_through_sdk": "yes please"})


@pytest.mark.parametrize("use_sim", ["false", "true"])
def test_rviz_adds_robot_ghost_and_rviz(use_sim):
    without = xarm6_inference({"use_sim": use_sim, "rviz": "false"})
    graph = xarm6_inference({"use_sim": use_sim, "rviz": "true"})
    extra = graph.processes[len(without.processes):]
    assert graph.processes[: len(without.processes)] == without.processes
    assert [(p.package, p.nodes[0].name) for p in extra] == [
        ("robot_state_publisher", "robot_state_publisher"), ("robot_state_publisher", "ghost_state_publisher"),
        ("rviz2", "rviz2")]
    robot, ghost, rviz = extra
    assert dict(robot.remappings) == {"joint_states": "/joint_states"}
    assert dict(ghost.remappings) == {"joint_states": "/evo1_inference/predicted_joint_states",
                                      "robot_description": "/ghost/robot_description"}
    assert '<link name="ghost/link6">' in ghost.nodes[0].parameters["robot_description"]
    assert rviz.arguments == ("-d", str(CONFIG / "evo1.rviz"))


def test_params_file_argument_and_overrides(tmp_path):
    params = yaml.safe_load((CONFIG / "evo1.yaml").read_text())
    params["evo1_camera"]["ros__parameters"].update(camera_namespace="cams", serials=["_1", "_2"])
    params["xarm6_driver"]["ros__parameters"]["robot_ip"] = "10.1.1.1"
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump(params))
    graph = xarm6_inference({"params_file": str(custom)})
    found = nodes(graph)
    assert found["evo1_camera"][1].parameters == {"names": ["base", "wrist"]}  # serials stay the file's
    assert found["evo1_inference"][1].parameters["camera_topics"][0] == "/cams/base/color/image_raw"
    assert found["xarm6_driver"][1].parameters["robot_ip"] == "10.1.1.1"
    assert xarm6_inference({"params_file": str(custom), "robot_ip": "10.2.2.2"}).find(
        "xarm6_driver").parameters["robot_ip"] == "10.2.2.2"

    # what both launchers hand the node: the params file, then its overrides on top
    (process,) = [p for p in graph.processes if p.executable == "inference_node"]
    files = process.parameter_files(graph.params_file, tmp_path)
    assert files[0] == str(custom)
    assert yaml.safe_load(Path(files[1]).read_text()) == {
        "evo1_inference": {"ros__parameters": found["evo1_inference"][1].parameters}}


def test_follow_joint_trajectory_leaves_the_arm_to_xarm_ros2(tmp_path):
    params = yaml.safe_load((CONFIG / "evo1.yaml").read_text())
    params["evo1_inference"]["ros__parameters"]["use_follow_joint_trajectory"] = True
    custom = tmp_path / "follow.yaml"
    custom.write_text(yaml.safe_dump(params))
    graph = xarm6_inference({"params_file": str(custom), "robot_ip": "10.0.0.1"})
    assert set(nodes(graph)) == {"evo1_inference"}
    assert any("not starting xarm6_driver" in note for note in graph.notes)


@pytest.mark.parametrize("bad, match", [
    (["use_sim:=maybe"], "expected true or false"),
    (["control_rate:=fast"], "expected a number"),
    (["cameras:=base:_1,wrist"], "serial for every camera or for none"),
])
def test_bad_arguments_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        xarm6_inference(parse_arguments(bad))


def test_unknown_argument_lists_the_known_ones():
    with pytest.raises(ValueError, match="robot_ip, use_sim"):
        parse_arguments(["robot:=1"])
    with pytest.raises(ValueError, match="name:=value"):
        parse_arguments(["robot_ip=1"])


def test_cli_prints_the_graph(capsys):
    args = build_parser().parse_args(["launch", "-p", "xarm6_inference", "use_sim:=true", "rviz:=true"])
    assert args._run(args) == 0
    out = capsys.readouterr().out
    assert "evo1_ros/sim_node: evo1_sim evo1_ros.nodes.sim:SimNode" in out
    assert "rviz2/rviz2: rviz2 (ROS install)" in out
    args = build_parser().parse_args(["launch", "xarm6_inference", "use_sim:=perhaps"])
    assert args._run(args) == 2


def test_params_file_sections_match_the_nodes_parameters():
    """Every key in config/evo1.yaml is a parameter the node declares (a typo would be ignored)."""
    pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    from evo1_ros.nodes import camera, driver, inference, sim

    params = yaml.safe_load((CONFIG / "evo1.yaml").read_text())
    assert set(params) == {"evo1_inference", "xarm6_driver", "evo1_camera", "evo1_sim"}
    for node, module in (("evo1_inference", inference), ("xarm6_driver", driver), ("evo1_camera", camera),
                         ("evo1_sim", sim)):
        assert set(params[node]["ros__parameters"]) <= set(module.PARAMETERS), node


def test_rviz_config_shows_the_graphs_topics():
    config = yaml.safe_load((CONFIG / "evo1.rviz").read_text())
    displays = config["Visualization Manager"]["Displays"]
    by_class = {}
    for display in displays:
        by_class.setdefault(display["Class"], []).append(display)
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "link_base"
    models = {d["Description Topic"]["Value"] for d in by_class["rviz_default_plugins/RobotModel"]}
    assert models == {"/robot_description", "/ghost/robot_description"}
    assert "rviz_default_plugins/TF" in by_class
    images = {d["Topic"]["Value"] for d in by_class["rviz_default_plugins/Image"]}
    assert images == set(xarm6_inference({}).find("evo1_inference").parameters["camera_topics"])
    (path,) = by_class["rviz_default_plugins/Marker"]
    # the inference node publishes ~/predicted_path: /<node name>/predicted_path
    assert path["Topic"]["Value"] == "/evo1_inference/predicted_path"
    source = (REPO / "evo1_ros" / "nodes" / "inference.py").read_text()
    assert '"~/predicted_path"' in source and '"~/predicted_joint_states"' in source


def test_overrides_reach_a_node_through_rcl(tmp_path):
    """The URDF and typed overrides survive the YAML round trip into a node's parameters."""
    rclpy = pytest.importorskip("rclpy")
    from evo1_ros.robot.description import xarm6_urdf

    graph = xarm6_inference({"rviz": "true", "control_rate": "12"})
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        for name, expected in [("robot_state_publisher", {"robot_description": xarm6_urdf()}),
                               ("evo1_inference", {"control_rate_hz": 12.0, "instruction": "put the can in the box"})]:
            (process,) = [p for p in graph.processes if p.nodes[0].name == name]
            args = ["--ros-args", "-r", f"__node:={name}"]
            for path in process.parameter_files(graph.params_file, tmp_path):
                args += ["--params-file", path]
            node = rclpy.create_node("probe", context=context, cli_args=args)
            try:
                for key, value in expected.items():
                    assert node.declare_parameter(key, type(value)()).value == value
            finally:
                node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
