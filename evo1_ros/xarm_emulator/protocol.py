"""The xArm controller's wire format, as the controller side speaks it. No sockets here.

Learned from xarm-python-sdk 1.18 (`xarm/core/comm`, `xarm/core/wrapper/uxbus_cmd*.py`,
`xarm/x3/base.py`, `xarm/x3/report.py`); written for the emulator, not taken from the SDK.

Commands (TCP 502) use a private Modbus-TCP framing. A request is
    u16 transaction id | u16 protocol id | u16 length | u8 register | payload (length - 1 bytes)
and the reply repeats the transaction id, protocol id and register, then a status byte:
    u16 transaction id | u16 protocol id | u16 length | u8 register | u8 status | payload
with length = 2 + len(payload). The protocol id is 2 (3 once the SDK turns on its heartbeat);
integers are big-endian, floats little-endian IEEE 754.

Report streams (30001 normal, 30002 rich, 30003 real-time) push frames that start with their own
u32 big-endian length; `normal_report`, `rich_report` and `real_report` build them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

COMMAND_PORT = 502
REPORT_PORTS = {"normal": 30001, "rich": 30002, "real": 30003}
PRIVATE_PROTOCOLS = (2, 3)
HEADER = struct.Struct(">HHH")  # transaction id, protocol id, length
NUM_AXES = 7  # the controller reports and takes 7 joint values whatever the arm; an xArm6 leaves the 7th at 0


class Register(IntEnum):
    """The command registers (the SDK's function codes) the emulator answers."""

    GET_VERSION = 1
    GET_ROBOT_SN = 2
    MOTION_ENABLE = 11
    SET_STATE = 12
    GET_STATE = 13
    GET_CMDNUM = 14
    GET_ERROR = 15
    CLEAN_ERROR = 16
    CLEAN_WARNING = 17
    SET_MODE = 19
    MOVE_JOINT = 23  # set_servo_angle: a planned joint move (mode 0) or the newest goal (mode 6)
    MOVE_SERVOJ = 29  # set_servo_angle_j: a servo target (mode 1)
    GET_TCP_POSE = 41
    GET_JOINT_POS = 42
    RS485_RTU = 124  # a Modbus RTU frame passed through to the tool's RS-485 bus (the gripper)
    TOOL_WRITE_REGISTER = 127  # the tool board's own registers (RS-485 baud rate, reboot)
    TOOL_READ_REGISTER = 128
    SET_FEEDBACK_TYPE = 254


class Status(IntEnum):
    """Bits of a reply's status byte."""

    INVALID = 0x08  # the command was not understood or not executed
    NOT_READY = 0x10  # the arm is stopped or its configuration changed: no motion commands
    WARNING = 0x20  # an uncleared warning
    ERROR = 0x40  # an uncleared error


@dataclass(frozen=True)
class Request:
    transaction: int
    protocol: int
    register: int
    payload: bytes


def split_request(buffer: bytes) -> tuple[Request | None, bytes]:
    """The first complete request in `buffer` and what is left after it (None while incomplete)."""
    if len(buffer) < HEADER.size + 1:
        return None, buffer
    transaction, protocol, length = HEADER.unpack_from(buffer)
    end = HEADER.size + length
    if len(buffer) < end:
        return None, buffer
    register = buffer[HEADER.size] if length else 0
    return Request(transaction, protocol, register, bytes(buffer[HEADER.size + 1:end])), buffer[end:]


def reply(request: Request, status: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(request.transaction, request.protocol, 2 + len(payload)) + bytes(
        [request.register, status]) + payload


def floats(data: bytes, count: int) -> list[float]:
    return list(struct.unpack_from(f"<{count}f", data))


def pack_floats(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def text_field(text: str, size: int = 40) -> bytes:
    """A NUL-padded ASCII field, as the version and serial number replies carry."""
    raw = text.encode("ascii")[: size - 1]
    return raw + b"\0" * (size - len(raw))


# --- the gripper behind the RS-485 pass-through -------------------------------------------------

ROBOT_RS485_HOST = 9  # the bus on the arm's tool flange
GRIPPER_SLAVE = 8
READ_HOLDING_REGISTERS = 0x03
WRITE_MULTIPLE_REGISTERS = 0x10
TOOL_BAUD_REGISTER = 0x0A0B
BAUD_RATES = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 1500000,
              2000000, 2500000)
GRIPPER_BAUD = 2000000  # what the SDK expects the xArm gripper's bus to run at


class GripperRegister(IntEnum):
    """The xArm gripper's Modbus holding registers the SDK uses."""

    STATUS = 0x0000
    ERROR_CODE = 0x000F
    ENABLE = 0x0100
    MODE = 0x0101
    RESET_ERROR = 0x0109
    SPEED = 0x0303
    TARGET_POSITION = 0x0700  # two registers: s32, pulses
    POSITION = 0x0702  # two registers: s32, pulses
    VERSION_MAJOR = 0x0801
    VERSION_MINOR = 0x0802
    VERSION_PATCH = 0x0803


# --- report frames ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What a report frame tells: the controller's state at one instant."""

    state: int
    mode: int
    cmd_num: int
    joints: np.ndarray  # (7,) rad
    velocities: np.ndarray  # (7,) rad/s
    tcp_pose: np.ndarray  # (6,) mm and rad (roll, pitch, yaw)
    error: int
    warning: int
    motors_enabled: bool
    version: str


def _state_mode(s: Snapshot) -> bytes:
    return struct.pack(">BH", (s.mode << 4) | (s.state & 0x0F), s.cmd_num)


def _framed(body: bytes) -> bytes:
    return struct.pack(">I", 4 + len(body)) + body


def real_report(s: Snapshot) -> bytes:
    """30003: state/mode, command count, joints, TCP pose, torques, F/T sensor (135 bytes)."""
    zeros = [0.0] * 6
    return _framed(_state_mode(s) + pack_floats(s.joints) + pack_floats(s.tcp_pose) + pack_floats([0.0] * NUM_AXES)
                   + pack_floats(zeros) + pack_floats(zeros))


def _normal_body(s: Snapshot) -> bytes:
    motors = 0xFF if s.motors_enabled else 0x00
    return (_state_mode(s) + pack_floats(s.joints) + pack_floats(s.tcp_pose) + pack_floats([0.0] * NUM_AXES)
            + bytes([motors, motors, s.error, s.warning])
            + pack_floats([0.0] * 6)  # TCP offset
            + pack_floats([0.0] * 4)  # TCP payload: mass, centre of mass
            + bytes([3, 3])  # collision and teaching sensitivity (0..5)
            + pack_floats([0.0, 0.0, -1.0]))  # gravity direction


def normal_report(s: Snapshot) -> bytes:
    """30001: the real-time fields plus brakes/motors, error and warning codes (145 bytes)."""
    return _framed(_normal_body(s))


def rich_report(s: Snapshot, axis: int = 6, robot_type: int = 6) -> bytes:
    """30002: the normal fields plus the arm's type and limits, temperatures and joint speeds."""
    tcp_limits = [0.0, 1.0, 50000.0, 0.1, 1000.0]  # jerk, min/max acceleration, min/max speed (mm)
    joint_limits = [0.0, 0.01, 20.0, 0.01, math.pi]  # the same in rad
    return _framed(_normal_body(s)
                   + bytes([robot_type, axis, 0, 0, 0, 0])  # type, axes, master/slave ids, motor ids
                   + text_field(s.version, 30)
                   + pack_floats(tcp_limits) + pack_floats(joint_limits) + pack_floats([0.0, 0.0])  # rotation jerk, acc
                   + bytes(16)  # servo status and error codes
                   + bytes([30] * NUM_AXES)  # temperatures, degC
                   + pack_floats([0.0, *s.velocities])  # TCP speed, joint speeds
                   + struct.pack(">I", 0))  # counter


REPORTS = {"normal": normal_report, "rich": rich_report, "real": real_report}
