"""MuJoCo simulation of the xArm6 tasks: scene (`mjcf`), tasks and their detectors (`tasks`), scene
variations (`scenes`), seed protocol (`seeds`), ROS-free world (`world.SimWorld`), scripted experts
(`expert`), and the driver's `sim` backend (`backend`)."""

import os

# Headless by default: MuJoCo picks its OpenGL platform when it is first imported, and without a
# display its default (GLFW) cannot render. OSMesa renders on the CPU anywhere; set MUJOCO_GL=egl
# on a GPU machine. PyOpenGL must agree with it.
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
