"""MuJoCo simulation of the xArm6 tasks: scene (`mjcf`), tasks and their detectors (`tasks`), scene
variations (`scenes`), seed protocol (`seeds`), ROS-free world (`world.SimWorld`), scripted experts
(`expert`), and the driver's `sim` backend (`backend`)."""

import importlib.util
import os

# Headless by default: MuJoCo picks its OpenGL platform when it is first imported, and without a
# display its default (GLFW) cannot render. OSMesa renders on the CPU anywhere; set MUJOCO_GL=egl
# on a GPU machine. PyOpenGL must agree with it.
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

# PyOpenGL loads OSMesa, and with it Mesa's LLVM, into the global symbol scope. Triton (the fused
# head's kernels; torch imports it too when present) carries an LLVM of its own, and loaded after
# Mesa's its library binds to those symbols and the process segfaults. Loaded first, it keeps its
# own: so where Triton is installed, load it before anything renders (~0.15 s).
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
