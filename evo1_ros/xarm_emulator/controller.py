"""`Controller`: the xArm control box's rules, without sockets. The server hands it each command's
register and payload and sends back its status byte and payload; a cycle thread advances it.

The rules, as UFACTORY documents them for the SDK:
- states: 1 moving, 2 ready (sleeping), 3 paused, 4 stopped, 5 configuration changed. Motion
  commands are taken only in state 1/2 with the motors enabled; others are answered "not ready".
- `set_mode` changes the mode and leaves the arm in state 5 until `set_state(0)`.
- mode 1 (servo): `set_servo_angle_j` targets are followed at once, newest only. A target outside
  the joint limits raises C23; a step faster than the joint speed limit raises C24, measured
  against the stream's own period (a running estimate, so one late packet is not a speeding arm).
- mode 0 (position): `set_servo_angle` moves are queued and played one after the other; mode 6
  (online planning) replaces the goal with the newest one.
- mode 2 (joint teaching): the arm is moved by hand (`guide`), motion commands are ignored.
- an error (raised by a rule or injected) stops the arm and drops it to mode 0 / state 4; it moves
  again only after clean_error, motion_enable, set_mode and set_state(0).
- the gripper sits behind the RS-485 pass-through as Modbus RTU slave 8.
- not a rule of the real box: when a sim arm's world starts a new episode, the arm stands at HOME
  and the controller drops every target it had and pauses (state 3: motion commands are ignored)
  until `set_state(0)`, so that a command sent for the last episode cannot drag the arm back.
"""

from __future__ import annotations

import collections
import math
import struct
import threading
import time

import numpy as np

from evo1_ros.robot import xarm6
from evo1_ros.xarm_emulator.protocol import (
    BAUD_RATES,
    GRIPPER_BAUD,
    GRIPPER_SLAVE,
    NUM_AXES,
    READ_HOLDING_REGISTERS,
    ROBOT_RS485_HOST,
    TOOL_BAUD_REGISTER,
    WRITE_MULTIPLE_REGISTERS,
    GripperRegister,
    Register,
    Snapshot,
    Status,
    floats,
    pack_floats,
    text_field,
)

MOVING, READY, PAUSED, STOPPED, CONFIG_CHANGED = 1, 2, 3, 4, 5
SERVO, POSITION, TEACHING, ONLINE_PLANNING = 1, 0, 2, 6
MODES = (POSITION, SERVO, TEACHING, ONLINE_PLANNING)
CYCLE_S = 0.004  # the control box runs at 250 Hz
MAX_JOINT_SPEED = math.pi  # rad/s, the xArm6's joint speed limit (180 deg/s)
MAX_STREAM_PERIOD_S = 0.1  # a servo stream slower than this is judged at this period
JOINT_LIMIT_ERROR, SPEED_LIMIT_ERROR = 23, 24
SERVO_LOG = 20000  # accepted servo targets kept for inspection (200 s at 100 Hz)
ROBOT_SN, CONTROL_BOX_SN = "XI1303EMU01", "AC1303EMU01"  # 1303: the SDK picks the xArm6 X4 limits
FIRMWARE = "2.3.0"
GRIPPER_PULSES_PER_RPM_S = 0.3  # gripper stroke speed (pulses/s) per unit of its speed register (r/min)


def rpy(rotation: np.ndarray) -> tuple[float, float, float]:
    """Roll, pitch, yaw (R = Rz(yaw) Ry(pitch) Rx(roll)) of a rotation matrix."""
    pitch = math.asin(-max(-1.0, min(1.0, rotation[2, 0])))
    return math.atan2(rotation[2, 1], rotation[2, 2]), pitch, math.atan2(rotation[1, 0], rotation[0, 0])


class Gripper:
    """The xArm gripper's registers; its fingers move in the arm model."""

    def __init__(self, arm):
        self.arm = arm
        self.enabled, self.mode, self.speed, self.error = False, 0, 2000, 0
        self.target = xarm6.gripper_to_sdk(arm.gripper())

    def position(self) -> int:
        return int(round(xarm6.gripper_to_sdk(self.arm.gripper())))

    def _read(self, register: int) -> int:
        values = {GripperRegister.STATUS: 1 if abs(self.position() - self.target) > 2 else 0,
                  GripperRegister.ERROR_CODE: self.error, GripperRegister.ENABLE: int(self.enabled),
                  GripperRegister.MODE: self.mode, GripperRegister.SPEED: self.speed,
                  GripperRegister.VERSION_MAJOR: 3, GripperRegister.VERSION_MINOR: 4, GripperRegister.VERSION_PATCH: 3}
        return values.get(register, 0)

    def _write(self, register: int, values: list[int]) -> None:
        if register == GripperRegister.ENABLE:
            self.enabled = bool(values[0])
        elif register == GripperRegister.MODE:
            self.mode = values[0]
        elif register == GripperRegister.SPEED:
            self.speed = values[0]
        elif register == GripperRegister.RESET_ERROR:
            self.error = 0
        elif register == GripperRegister.TARGET_POSITION and len(values) == 2:
            self.target = struct.unpack(">i", struct.pack(">HH", *values))[0]
            if self.enabled:
                pulses_per_s = GRIPPER_PULSES_PER_RPM_S * self.speed
                self.arm.set_gripper_target(xarm6.sdk_to_gripper(self.target),
                                            pulses_per_s * xarm6.GRIPPER_CLOSED / xarm6.SDK_GRIPPER_OPEN)

    def modbus(self, frame: bytes) -> bytes:
        """A Modbus RTU request (slave, function, ...) -> its response frame."""
        slave, function = frame[0], frame[1]
        if slave != GRIPPER_SLAVE or function not in (READ_HOLDING_REGISTERS, WRITE_MULTIPLE_REGISTERS):
            return bytes([slave, function | 0x80, 0x01])  # illegal function
        address, count = struct.unpack_from(">HH", frame, 2)
        if function == WRITE_MULTIPLE_REGISTERS:
            values = list(struct.unpack_from(f">{count}H", frame, 7))
            self._write(address, values)
            return frame[:6]
        if address in (GripperRegister.POSITION, GripperRegister.TARGET_POSITION) and count == 2:
            value = self.position() if address == GripperRegister.POSITION else self.target
            data = struct.pack(">i", value)
        else:
            data = b"".join(struct.pack(">H", self._read(address + i) & 0xFFFF) for i in range(count))
        return bytes([slave, function, len(data)]) + data


class Controller:
    def __init__(self, arm, clock=time.monotonic):
        self.lock = threading.RLock()
        self.arm = arm
        self.clock = clock
        self.gripper = Gripper(arm)
        self.mode, self._state, self.error, self.warning = POSITION, STOPPED, 0, 0
        self.motors_enabled = False
        self._moves: collections.deque = collections.deque()  # queued (goal (6,), speed) in mode 0
        self._move = None  # the move being played: (start, goal, duration, elapsed)
        self._servo_reference: tuple[np.ndarray, float] | None = None  # last servo target and its time
        self._stream_period: float | None = None  # running estimate of the servo stream's period
        self.first_servo_time: float | None = None
        self.servo_log: collections.deque = collections.deque(maxlen=SERVO_LOG)  # (time, target (6,))
        self.events: collections.deque = collections.deque(maxlen=200)  # (time, what happened)

    # --- what the reports and the API read ------------------------------------------------------

    @property
    def state(self) -> int:
        if self._state == READY and (self._move is not None or np.abs(self.arm.velocities()).max() > 1e-3):
            return MOVING
        return self._state

    def status_byte(self) -> int:
        status = 0
        if self.error:
            status |= Status.ERROR
        if self.warning:
            status |= Status.WARNING
        if self._state in (STOPPED, CONFIG_CHANGED) or not self.motors_enabled:
            status |= Status.NOT_READY
        return status

    def snapshot(self) -> Snapshot:
        with self.lock:
            joints = self.arm.joints()
            pose = xarm6.forward_kinematics(joints, tcp_offset=0.0).tcp
            return Snapshot(
                state=self.state, mode=self.mode, cmd_num=len(self._moves) + (self._move is not None),
                joints=np.append(joints, 0.0), velocities=np.append(self.arm.velocities(), 0.0),
                tcp_pose=np.array([*(pose[:3, 3] * 1000.0), *rpy(pose[:3, :3])]), error=self.error,
                warning=self.warning, motors_enabled=self.motors_enabled,
                version=f"{xarm6.NUM_JOINTS},{xarm6.NUM_JOINTS},{ROBOT_SN},{CONTROL_BOX_SN},v{FIRMWARE}")

    # --- events the emulator raises -------------------------------------------------------------

    def _log(self, what: str) -> None:
        self.events.append((self.clock(), what))

    def raise_error(self, code: int, why: str = "injected") -> None:
        """The controller's reaction to any error: stop now, mode 0, state 4."""
        with self.lock:
            self.error = code
            self.mode = POSITION
            self._stop()
            self._log(f"error C{code} ({why})")

    def set_warning(self, code: int) -> None:
        with self.lock:
            self.warning = code
            self._log(f"warning W{code}")

    def guide(self, joints) -> None:
        """Someone moves the arm by hand: allowed in joint teaching mode only."""
        joints = np.asarray(joints, dtype=float)
        if joints.shape != (xarm6.NUM_JOINTS,) or not np.isfinite(joints).all():
            raise ValueError(f"guide: expected {xarm6.NUM_JOINTS} finite joint angles, got {joints.tolist()}")
        with self.lock:
            if self.mode != TEACHING or self._state not in (READY, MOVING):
                raise ValueError(f"the arm can be guided by hand in teaching mode (2) only; it is in mode {self.mode}, "
                                 f"state {self.state}")
            self.arm.place(joints)

    def _stop(self) -> None:
        self._state = STOPPED
        self._moves.clear()
        self._move = None
        self._servo_reference, self._stream_period = None, None
        self.arm.set_target(self.arm.joints())

    def _notice_arm_reset(self) -> None:
        """Before anything the controller does: has the arm been put back at its start (a sim episode
        reset)? Then forget the targets and the servo stream of before, and pause until set_state(0)."""
        if not self.arm.take_reset():
            return
        self._moves.clear()
        self._move = None
        self._servo_reference, self._stream_period = None, None
        self.gripper.target = self.gripper.position()
        if self._state == READY:
            self._state = PAUSED
        self._log("the arm was put back at its start (a new sim episode): paused until set_state(0)")

    # --- the cycle ------------------------------------------------------------------------------

    def cycle(self, dt: float) -> None:
        with self.lock:
            self._notice_arm_reset()
            if self._move is None and self._moves and self._state == READY:
                goal, speed = self._moves.popleft()
                start = self.arm.joints()
                self._move = [start, goal, max(np.abs(goal - start).max() / speed, CYCLE_S), 0.0]
            if self._move is not None and self._state == READY:
                start, goal, duration, elapsed = self._move
                self._move[3] = elapsed = min(elapsed + dt, duration)
                self.arm.set_target(start + (goal - start) * elapsed / duration)
                if elapsed >= duration:
                    self._move = None
            self.arm.step(dt)
            self._notice_arm_reset()  # one the step saw

    # --- commands -------------------------------------------------------------------------------

    def handle(self, register: int, payload: bytes) -> tuple[int, bytes]:
        """(status byte, reply payload) for one command."""
        with self.lock:
            self._notice_arm_reset()
            try:
                handler = self._HANDLERS.get(register)
                result = handler(self, payload) if handler else None
            except (struct.error, IndexError, ValueError) as e:
                self._log(f"register {register}: malformed request ({e})")
                result = None
            if result is None:
                return self.status_byte() | Status.INVALID, b""
            return self.status_byte(), result

    def _get_version(self, payload: bytes) -> bytes:
        return text_field(self.snapshot().version)

    def _get_robot_sn(self, payload: bytes) -> bytes:
        return (ROBOT_SN + "\0" + CONTROL_BOX_SN + "\0").encode().ljust(40, b"\0")

    def _motion_enable(self, payload: bytes) -> bytes:
        self.motors_enabled = bool(payload[1])
        if not self.motors_enabled:
            self._stop()
        return b""

    def _set_state(self, payload: bytes) -> bytes | None:
        requested = payload[0]
        if requested == 0:
            if not self.error and self.motors_enabled:
                if self._state != PAUSED:
                    self.arm.set_target(self.arm.joints())
                    self._servo_reference, self._stream_period = None, None
                self._state = READY
        elif requested == PAUSED:
            if self._state == READY:
                self._state = PAUSED
        elif requested == STOPPED:
            self._stop()
        else:
            return None
        return b""

    def _set_mode(self, payload: bytes) -> bytes | None:
        mode = payload[0]
        if mode not in MODES:
            self._log(f"set_mode({mode}): not emulated")
            return None
        if self.error:
            return b""  # refused: the error bit in the reply says why
        self.mode = mode
        self._stop()
        self._state = CONFIG_CHANGED
        return b""

    def _clean_error(self, payload: bytes) -> bytes:
        if self.error:
            self._log(f"error C{self.error} cleared")
        self.error = 0
        return b""

    def _clean_warning(self, payload: bytes) -> bytes:
        self.warning = 0
        return b""

    def _ready_for(self, mode: int | tuple[int, ...]) -> bool:
        """Whether a motion command for `mode` executes now (else it is answered or ignored)."""
        modes = mode if isinstance(mode, tuple) else (mode,)
        return not self.error and self.motors_enabled and self._state == READY and self.mode in modes

    def _outside_limits(self, joints: np.ndarray) -> bool:
        if ((joints < xarm6.JOINT_LOWER) | (joints > xarm6.JOINT_UPPER)).any():
            self.raise_error(JOINT_LIMIT_ERROR, f"target {np.round(joints, 4).tolist()} outside the joint limits")
            return True
        return False

    def _move_servoj(self, payload: bytes) -> bytes:
        target = np.array(floats(payload, NUM_AXES)[: xarm6.NUM_JOINTS])
        if not self._ready_for(SERVO) or self._outside_limits(target):
            return b""
        now = self.clock()
        if self._servo_reference is None:  # a new stream starts from where the arm is, within one cycle
            previous, period = self.arm.joints(), CYCLE_S
        else:
            previous, last_time = self._servo_reference
            interval = min(max(now - last_time, CYCLE_S), MAX_STREAM_PERIOD_S)
            period = self._stream_period = interval if self._stream_period is None else (
                0.9 * self._stream_period + 0.1 * interval)
        speed = float(np.abs(target - previous).max()) / period
        if speed > MAX_JOINT_SPEED:
            self.raise_error(SPEED_LIMIT_ERROR, f"servo step at {speed:.2f} rad/s (limit {MAX_JOINT_SPEED:.2f})")
            return b""
        self._servo_reference = (target, now)
        if self.first_servo_time is None:
            self.first_servo_time = now
        self.servo_log.append((now, target))
        self.arm.set_target(target)
        return b""

    def _move_joint(self, payload: bytes) -> bytes:
        values = floats(payload, NUM_AXES + 3)
        goal, speed = np.array(values[: xarm6.NUM_JOINTS]), min(max(values[NUM_AXES], 1e-3), MAX_JOINT_SPEED)
        if not self._ready_for((POSITION, ONLINE_PLANNING)) or self._outside_limits(goal):
            return b""
        if self.mode == ONLINE_PLANNING:
            self._moves.clear()
            self._move = None
        self._moves.append((goal, speed))
        return b""

    def _get_joint_pos(self, payload: bytes) -> bytes:
        return pack_floats(np.append(self.arm.joints(), 0.0))

    def _get_tcp_pose(self, payload: bytes) -> bytes:
        return pack_floats(self.snapshot().tcp_pose)

    def _get_state(self, payload: bytes) -> bytes:
        return bytes([self.state])

    def _get_cmdnum(self, payload: bytes) -> bytes:
        return struct.pack(">H", len(self._moves) + (self._move is not None))

    def _get_error(self, payload: bytes) -> bytes:
        return bytes([self.error, self.warning])

    def _tool_read(self, payload: bytes) -> bytes:
        host, address = payload[0], struct.unpack_from(">H", payload, 1)[0]
        value = BAUD_RATES.index(GRIPPER_BAUD) if (host, address) == (ROBOT_RS485_HOST, TOOL_BAUD_REGISTER) else 0
        return struct.pack(">i", value)

    def _tool_write(self, payload: bytes) -> bytes:
        return b""  # baud rate and reboot requests: the emulated bus already runs at the gripper's rate

    def _rs485(self, payload: bytes) -> bytes | None:
        """RS-485 pass-through: host id + Modbus RTU frame -> host id + response (None: not ours)."""
        if payload[0] != ROBOT_RS485_HOST:
            return None
        with self.lock:
            return payload[:1] + self.gripper.modbus(payload[1:])

    def _accept(self, payload: bytes) -> bytes:
        return b""

    _HANDLERS = {
        Register.GET_VERSION: _get_version, Register.GET_ROBOT_SN: _get_robot_sn,
        Register.MOTION_ENABLE: _motion_enable, Register.SET_STATE: _set_state, Register.GET_STATE: _get_state,
        Register.GET_CMDNUM: _get_cmdnum, Register.GET_ERROR: _get_error, Register.CLEAN_ERROR: _clean_error,
        Register.CLEAN_WARNING: _clean_warning, Register.SET_MODE: _set_mode, Register.MOVE_JOINT: _move_joint,
        Register.MOVE_SERVOJ: _move_servoj, Register.GET_TCP_POSE: _get_tcp_pose,
        Register.GET_JOINT_POS: _get_joint_pos, Register.RS485_RTU: _rs485,
        Register.TOOL_READ_REGISTER: _tool_read, Register.TOOL_WRITE_REGISTER: _tool_write,
        Register.SET_FEEDBACK_TYPE: _accept,
    }
