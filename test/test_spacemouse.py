"""SpaceMouse reader through pyspacemouse's own enumeration, spec lookup, axis convention and
report parsing, fed with HID reports built byte for byte as a SpaceMouse Compact sends them (USB
HID: report 1 = translation X Y Z, report 2 = rotation Rx Ry Rz, int16 little-endian, X right,
Y toward the user, Z down; report 3 = buttons). Only the hidraw device object is ours."""

import struct
from collections import deque

import numpy as np
import pytest
import pyspacemouse.api
from easyhid import HIDException

from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN
from evo1_ros.teleop.device import DeviceError
from evo1_ros.teleop.spacemouse import SpaceMouseConfig, SpaceMouseReader

FULL = 350  # counts at full deflection (pyspacemouse's axis_scale for this model)
SPEED = SpaceMouseConfig().linear_speed
TURN = SpaceMouseConfig().angular_speed


class HidrawDevice:
    """What easyhid.Device offers pyspacemouse for one SpaceMouse Compact (256f:c635): reports
    arrive in order; read() returns b"" when none is pending (non-blocking) and raises easyhid's
    HIDException once the device is unplugged, as hidapi's hid_read does (-1)."""

    vendor_id, product_id = 0x256F, 0xC635
    path = b"/dev/hidraw7"
    product_string, manufacturer_string, release_number, serial_number = "SpaceMouse Compact", "3Dconnexion", 0x437, ""

    def __init__(self):
        self.reports: deque[bytes] = deque()
        self.unplugged = self.is_open = False

    def open(self):
        self.is_open = True

    def close(self):
        self.is_open = False

    def set_nonblocking(self, enable):
        assert enable is True

    def read(self, size=64, timeout=None):
        if self.unplugged:
            raise HIDException("Failed to read from HID device: -1")
        if not self.reports:
            return bytearray()
        report = self.reports.popleft()
        return bytearray(report[:size].ljust(size, b"\0"))

    def move(self, tx=0, ty=0, tz=0, rx=0, ry=0, rz=0):
        self.reports.append(struct.pack("<Bhhh", 1, tx, ty, tz))
        self.reports.append(struct.pack("<Bhhh", 2, rx, ry, rz))

    def press(self, left=False, right=False):
        self.reports.append(bytes([3, int(left) | int(right) << 1]))


class Enumeration:
    devices: list = []

    def find(self, **_):
        return list(self.devices)


@pytest.fixture
def hid(monkeypatch):
    device = HidrawDevice()
    monkeypatch.setattr(Enumeration, "devices", [device])
    monkeypatch.setattr(pyspacemouse.api, "Enumeration", Enumeration)
    return device


@pytest.mark.parametrize("motion, twist", [
    (dict(ty=-FULL), [SPEED, 0, 0, 0, 0, 0]),  # pushed away from the user: forward
    (dict(tx=FULL), [0, -SPEED, 0, 0, 0, 0]),  # pushed right
    (dict(tz=-FULL), [0, 0, SPEED, 0, 0, 0]),  # pulled up (HID z points down)
    (dict(rz=-FULL), [0, 0, 0, 0, 0, TURN]),  # twisted counter-clockwise seen from above
    (dict(ry=FULL), [0, 0, 0, -TURN, 0, 0]),  # tilted about the axis toward the user: roll about -x
    (dict(rx=FULL), [0, 0, 0, 0, -TURN, 0]),  # tilted about the axis to the right: pitch about -y
])
def test_puck_motion_maps_to_a_twist_in_the_robots_axes(hid, motion, twist):
    with SpaceMouseReader() as mouse:
        hid.move(**motion)
        command = mouse.read()
    np.testing.assert_allclose(command.twist, twist, atol=1e-12)
    assert command.engaged and command.frame == "base" and command.gripper is None


def test_deadband_and_scaling(hid):
    with SpaceMouseReader(SpaceMouseConfig(deadband=0.1, frame="tool")) as mouse:
        hid.move(ty=-30, rz=20)  # a resting puck's drift
        rest = mouse.read()
        hid.move(ty=-FULL // 2, tx=-FULL * 2)  # half forward; beyond full left reads as full
        half = mouse.read()
    np.testing.assert_array_equal(rest.twist, np.zeros(6))
    assert not rest.engaged
    expected = np.array([(0.5 - 0.1) / 0.9 * SPEED, SPEED, 0, 0, 0, 0])
    np.testing.assert_allclose(half.twist, expected, atol=1e-12)
    assert half.frame == "tool"


def test_a_read_drains_every_pending_report_and_returns_to_rest(hid):
    with SpaceMouseReader() as mouse:
        for counts in (100, 200, 300):
            hid.move(ty=-counts)
        hid.move()  # released: the device sends a zero report
        assert not mouse.read().engaged
        assert not hid.reports
        hid.move(ty=-FULL)
        assert mouse.read().twist[0] == pytest.approx(SPEED)
        assert mouse.read().twist[0] == pytest.approx(SPEED)  # no new report: the state holds


def test_buttons_close_and_open_the_gripper(hid):
    with SpaceMouseReader() as mouse:
        hid.press(left=True)
        closing = mouse.read()
        hid.press(right=True)
        opening = mouse.read()
        hid.press(left=True, right=True)
        both = mouse.read()
    assert closing.gripper == GRIPPER_CLOSED and closing.engaged
    assert opening.gripper == GRIPPER_OPEN
    assert both.gripper is None


def test_with_a_deadman_nothing_moves_until_it_is_held(hid):
    config = SpaceMouseConfig(deadman_button=1, gripper_open_button=None)
    with SpaceMouseReader(config) as mouse:
        hid.move(ty=-FULL)
        hid.press(left=True)
        idle = mouse.read()
        hid.press(left=True, right=True)
        driving = mouse.read()
    assert not idle.engaged and idle.gripper is None and not idle.twist.any()
    assert driving.engaged and driving.gripper == GRIPPER_CLOSED and driving.twist[0] == pytest.approx(SPEED)


def test_device_yaw_turns_the_puck_to_the_operators_side(hid):
    with SpaceMouseReader(SpaceMouseConfig(device_yaw=np.pi / 2)) as mouse:  # operator on the robot's right
        hid.move(ty=-FULL)
        np.testing.assert_allclose(mouse.read().twist, [0, SPEED, 0, 0, 0, 0], atol=1e-12)


def test_unplugging_is_a_device_error_and_the_reader_stays_closed(hid):
    mouse = SpaceMouseReader()
    mouse.open()
    hid.move(ty=-FULL)
    mouse.read()
    hid.unplugged = True
    with pytest.raises(DeviceError, match="SpaceMouseCompact: read failed .*unplugged"):
        mouse.read()
    assert not hid.is_open
    with pytest.raises(DeviceError, match="not open"):
        mouse.read()


def test_no_device_is_a_device_error(monkeypatch, hid):
    monkeypatch.setattr(Enumeration, "devices", [])
    with pytest.raises(DeviceError, match="cannot open .*No connected or supported devices"):
        SpaceMouseReader().open()


def test_a_button_the_device_lacks_is_refused_at_open(hid):
    with pytest.raises(DeviceError, match="has 2 buttons; deadman_button 5 does not exist"):
        SpaceMouseReader(SpaceMouseConfig(deadman_button=5)).open()
    assert not hid.is_open


@pytest.mark.parametrize("field, value", [("deadband", 1.0), ("linear_speed", -1.0), ("frame", "world"),
                                          ("device_yaw", float("inf"))])
def test_bad_configurations_are_refused(field, value):
    with pytest.raises(ValueError):
        SpaceMouseConfig(**{field: value})
