"""Evo-1 on an xArm6: cameras (or the MuJoCo sim), inference, driver, and rviz when asked.

    ros2 launch evo1_ros xarm6_inference.launch.py robot_ip:=192.168.1.xxx checkpoint:=/path/to/ckpt \
        cameras:=base:_123456789012,wrist:_234567890123 instruction:="put the can in the box" rviz:=true
    ros2 launch evo1_ros xarm6_inference.launch.py use_sim:=true checkpoint:=/path/to/ckpt
    ros2 launch evo1_ros xarm6_inference.launch.py use_sim:=true sim_through_sdk:=true checkpoint:=/path/to/ckpt

Which nodes start with which parameters is decided in `evo1_ros.graphs.launch`, which
`evo1-ros launch xarm6_inference name:=value ...` runs in one process on machines without ROS 2 launch.
The driver is a lifecycle node: started with autostart off, then configured and, once inactive,
activated from here (in the sim it shares sim_node's process and activates itself).
"""

import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from evo1_ros.graphs import launch as launch_graph


def start_nodes(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in launch_graph.ARGUMENTS}
    graph = launch_graph.xarm6_inference(values)
    overrides = tempfile.mkdtemp(prefix="evo1_ros_launch_")  # launch_ros keeps its own param files the same way
    actions = [LogInfo(msg=note) for note in graph.notes]
    for process in graph.processes:
        options = dict(package=process.package, executable=process.executable,
                       parameters=process.parameter_files(graph.params_file, overrides),
                       remappings=list(process.remappings), arguments=list(process.arguments), output="screen")
        if [node.plugin for node in process.nodes] == [launch_graph.DRIVER]:
            actions += lifecycle_driver(process.nodes[0].name, options)
        else:
            # A name would rename every node of a multi-node process (sim_node); those keep their own.
            actions.append(Node(name=process.nodes[0].name if len(process.nodes) == 1 else None, **options))
    return actions


def lifecycle_driver(name, options):
    """The driver as a launch_ros LifecycleNode: configured at start, activated once configured."""
    driver = LifecycleNode(name=name, namespace="", **{**options, "parameters": options["parameters"] + [
        {"autostart": False}]})

    def change_state(transition):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(driver), transition_id=transition))

    # from configuring only: a later deactivate (active -> inactive) must not re-activate it
    activate = RegisterEventHandler(OnStateTransition(target_lifecycle_node=driver, start_state="configuring",
                                                      goal_state="inactive",
                                                      entities=[change_state(Transition.TRANSITION_ACTIVATE)]))
    return [activate, driver, change_state(Transition.TRANSITION_CONFIGURE)]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in launch_graph.ARGUMENTS.items()]
        + [OpaqueFunction(function=start_nodes)])
