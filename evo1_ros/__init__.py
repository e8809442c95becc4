"""evo1_ros: the Evo-1 vision-language-action model on a UFACTORY xArm6 under ROS 2.

The core (robot, model, runtime, data, train, sim, teleop) imports without ROS; only the ROS
layer, `evo1_ros.nodes` and `evo1_ros.graphs`, needs rclpy (docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
