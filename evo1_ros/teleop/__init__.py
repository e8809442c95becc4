"""ROS-free parts of the teleop node: key mapping (keys.py) and jog math (jog.py)."""
