"""An emulated UFACTORY xArm6 control box that the unmodified xarm-python-sdk talks to over TCP.

A layer of its own: above `evo1_ros.robot` (xArm facts) and `evo1_ros.sim` (the MuJoCo arm it can
drive), below the ROS layer, and free of rclpy. `XArmEmulator` runs in this process;
`EmulatorProcess` runs one in a process of its own (`evo1-ros xarm-emulator --control`).
"""

from evo1_ros.xarm_emulator.emulator import (
    FAULT_HELP,
    EmulatorConfig,
    Fault,
    XArmEmulator,
    free_loopback_address,
    parse_fault,
)
from evo1_ros.xarm_emulator.process import EmulatorError, EmulatorProcess

__all__ = ["FAULT_HELP", "EmulatorConfig", "EmulatorError", "EmulatorProcess", "Fault", "XArmEmulator",
           "free_loopback_address", "parse_fault"]
