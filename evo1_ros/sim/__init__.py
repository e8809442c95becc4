"""MuJoCo simulation of the xArm6 pick-and-place-can task: scene (`mjcf`), ROS-free world
(`world.SimWorld`), scripted expert (`expert`), and the driver's `sim` backend (`backend`)."""
