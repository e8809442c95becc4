"""evo1_ros: ament_python package (colcon build) that also installs with `pip install -e .`."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "evo1_ros"


def tree(top: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under `top` into share/<package>/<top>/..."""
    return [
        (os.path.join("share", PACKAGE, root), [os.path.join(root, f) for f in files])
        for root, _, files in os.walk(top)
        if files
    ]


ROS_WHEELS = [
    # The PyPI builds of ROS 2 Jazzy, for machines without a ROS install. On a real ROS 2 install
    # these come from apt (package.xml lists them) and this extra is not needed.
    "ros-jazzy-rclpy[fastrtps]",
    "ros-jazzy-std-msgs",
    "ros-jazzy-std-srvs",
    "ros-jazzy-sensor-msgs",
    "ros-jazzy-trajectory-msgs",
    "ros-jazzy-geometry-msgs",
    "ros-jazzy-visualization-msgs",
    "ros-jazzy-diagnostic-msgs",
    "ros-jazzy-lifecycle-msgs",  # the driver is a lifecycle node (rclpy.lifecycle)
]
SIM = ["mujoco>=3.1", "opencv-python-headless>=4.8"]
ROBOT = ["xarm-python-sdk>=1.14", "pyrealsense2>=2.54"]
DATA = ["rosbags>=0.10", "opencv-python-headless>=4.8"]
GPU = ["onnx>=1.16", "onnxruntime-gpu>=1.18", "triton>=3.2"]
# Teleop devices: a Dynamixel leader arm (GELLO) and a 3Dconnexion SpaceMouse (needs the system's
# libhidapi-hidraw0 on a real machine; the tests feed it HID reports without one).
TELEOP = ["dynamixel-sdk>=4.0", "pyspacemouse>=2.1"]
# import-linter and ruff: the architecture and lint tests (test/test_architecture.py, test/test_lint.py);
# triton: the fused action head's kernels (CUDA torch wheels bring their own), run on its CPU
# interpreter in the tests.
TEST = ["pytest>=7", "hypothesis>=6", "onnx>=1.16", "onnxruntime>=1.18", "import-linter>=2.1", "ruff>=0.6",
        "triton>=3.2"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Evo-1 vision-language-action policy on a UFACTORY xArm6 with ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*")),
        *tree("models"),
    ],
    install_requires=[
        "numpy>=1.24",
        "torch>=2.4",
        "transformers>=4.52",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
    ],
    extras_require={
        "ros": ROS_WHEELS,
        "sim": SIM,
        "robot": ROBOT,
        "data": DATA,
        "gpu": GPU,
        "teleop": TELEOP,
        "test": TEST + ROS_WHEELS + SIM + ROBOT + DATA + TELEOP,
    },
    entry_points={
        "console_scripts": [
            "evo1-ros = evo1_ros.cli:main",
            # ROS 2 node executables (`ros2 run evo1_ros <name>`); colcon puts them in lib/evo1_ros.
            "inference_node = evo1_ros.nodes.inference:main",
            "xarm6_driver = evo1_ros.nodes.driver:main",
            "camera_node = evo1_ros.nodes.camera:main",
            "sim_node = evo1_ros.nodes.sim:main",
            "recorder_node = evo1_ros.nodes.recorder:main",
            "teleop_node = evo1_ros.nodes.teleop:main",
        ]
    },
    zip_safe=False,
)
