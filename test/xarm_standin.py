"""An in-process stand-in for xarm.wrapper.XArmAPI, shared by the backend and driver node tests."""

import time

from evo1_ros.robot import xarm6


class StandInXArmAPI:
    """The part of xarm.wrapper.XArmAPI the backend uses, with the controller's rules: servo
    targets only in mode 1 / state 0, a controller error makes every motion call return 1 until
    clean_error, and after an error the arm falls to mode 0 / state 4."""

    instances: list = []

    def __init__(self, port, is_radian=False, report_type="normal", reachable=True):
        assert is_radian, "the backend must work in radians"
        self.port, self.report_type = port, report_type
        self.connected = reachable
        self.error_code, self.mode, self.state, self.enabled = 0, 0, 4, False
        self.angles = list(xarm6.HOME) + [0.0]  # the SDK reports 7 axes
        self.gripper_position = 850.0
        self.calls: list = []
        self.servo_targets: list = []
        self.block_next_servo_s = 0.0
        StandInXArmAPI.instances.append(self)

    def _code(self, motion=True):
        if not self.connected:
            return -1
        if self.error_code:
            return 1
        if motion and (self.mode != 1 or self.state != 0 or not self.enabled):
            return 9
        return 0

    def raise_controller_error(self, code):
        self.error_code, self.mode, self.state = code, 0, 4

    def get_err_warn_code(self):
        if not self.connected:  # the SDK's shape for a failed read
            return -1, "xArm is not connect"
        return 0, [self.error_code, 0]

    def clean_error(self):
        self.calls.append("clean_error")
        if not self.connected:
            return -1
        self.error_code = 0
        return 0

    def motion_enable(self, enable=True):
        self.calls.append("motion_enable")
        code = self._code(motion=False)
        self.enabled = enable if code == 0 else self.enabled
        return code

    def set_mode(self, mode):
        self.calls.append(f"set_mode({mode})")
        code = self._code(motion=False)
        self.mode = mode if code == 0 else self.mode
        return code

    def set_state(self, state):
        self.calls.append(f"set_state({state})")
        if not self.connected:
            return -1
        if state == 4 or not self.error_code:  # stopping is always allowed
            self.state = state
        return 0 if state == 4 or not self.error_code else 1

    def set_gripper_mode(self, mode):
        return self._code(motion=False)

    def set_gripper_enable(self, enable):
        return self._code(motion=False)

    def get_gripper_position(self):
        return self._code(motion=False), self.gripper_position

    def set_gripper_position(self, pos, wait=False):
        self.calls.append("set_gripper_position")
        code = self._code()
        if code == 0:
            self.gripper_position = pos
        return code

    def set_servo_angle_j(self, angles, is_radian=None):
        if self.block_next_servo_s:
            time.sleep(self.block_next_servo_s)
            self.block_next_servo_s = 0.0
        code = self._code()
        if code == 0:
            self.servo_targets.append(list(angles))
            self.angles = list(angles) + [0.0]
        return code

    def disconnect(self):
        self.connected = False
