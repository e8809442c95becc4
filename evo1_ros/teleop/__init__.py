"""Teleop without ROS: operator input sources (`sources`), the key map and terminal reader (`keys`),
jog maths (`jog`). The teleop node (evo1_ros.nodes.teleop) runs them."""
