"""The ROS layer's nodes (rclpy): inference, driver, camera, sim, recorder, teleop, and what they
share (messages, spinning, service calls). Only this layer and `evo1_ros.graphs` import rclpy and
message packages; the core below them does not (docs/ARCHITECTURE.md).

The driver makes its backend by name (`evo1_ros.robot.backends.make_backend`); the robot layer
knows only its own backends, so the sim's is registered here, where the layers are composed.
"""

from evo1_ros.robot.backends import register_backend

register_backend("sim", "evo1_ros.sim.backend:SimBackend")
