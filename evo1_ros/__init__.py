"""evo1_ros: the Evo-1 vision-language-action model on a UFACTORY xArm6 under ROS 2.

The core (model, runtime, robot, data, train, sim) imports without ROS; only `evo1_ros.nodes`
needs rclpy.
"""

__version__ = "0.1.0"
