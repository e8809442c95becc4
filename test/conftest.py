"""Shared test setup: keep DDS traffic on this machine and rendering offscreen."""

import os
import random

# Set before rclpy or mujoco is imported anywhere in the session.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# Without a GPU, Triton kernels (runtime/head_kernels.py) run on Triton's CPU interpreter; read
# when triton is first imported.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
