"""Reading a GELLO-style leader arm's Dynamixel servos (X series, Protocol 2.0) with dynamixel-sdk.
ROS-free.

The leader's servos are moved by hand (torque off): each control period one group sync read of
Present Position (a single instruction packet; every servo answers in turn) gets all of them.

    config = LeaderConfig.load("leader.yaml")          # teleop/leader.py
    with DynamixelLeader(config.port, config.baudrate, config.servo_ids) as bus:
        reading = config.reading(bus.read_positions())  # DeviceError on any bus failure

Failures surface as `DeviceError` naming the port and the servos: a port that will not open, a
servo that does not answer at open or during a read, corrupt status packets (CRC), or the adapter
unplugged. After a read failure the bus stays open (the next read may succeed); after the port
itself failed it is closed, and `open()` again reconnects.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from dynamixel_sdk import COMM_SUCCESS, GroupSyncRead, PacketHandler, PortHandler

from evo1_ros.teleop.device import DeviceError

PROTOCOL_VERSION = 2.0
ADDR_PRESENT_POSITION = 132  # X series control table, 4 bytes, signed
SIZE_PRESENT_POSITION = 4


class DynamixelLeader:
    """Present Positions of the servos `ids` (raw counts, in that order) on one serial bus."""

    def __init__(self, port: str, baudrate: int, ids: Sequence[int]):
        self.port_name, self.baudrate, self.ids = port, baudrate, tuple(ids)
        self._port = self._packets = self._sync = None

    def __enter__(self) -> DynamixelLeader:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """Open the port and check that every servo answers a ping; DeviceError otherwise."""
        self.close()
        port = PortHandler(self.port_name)
        try:
            opened = port.setBaudRate(self.baudrate)
        except OSError as error:  # pyserial's SerialException is an OSError
            raise DeviceError(f"leader: cannot open {self.port_name}: {error}") from error
        if not opened:
            raise DeviceError(f"leader: baud rate {self.baudrate} is not one the Dynamixel SDK supports")
        self._port, self._packets = port, PacketHandler(PROTOCOL_VERSION)
        try:
            unanswered = self._unanswered()
        except OSError as error:
            self.close()
            raise DeviceError(f"leader on {self.port_name}: bus failed at open ({error})") from error
        if unanswered:
            self.close()
            raise DeviceError(f"leader on {self.port_name}: {unanswered}; check the servos' power, ids "
                              f"and baud rate ({self.baudrate})")
        self._sync = GroupSyncRead(port, self._packets, ADDR_PRESENT_POSITION, SIZE_PRESENT_POSITION)
        for servo_id in self.ids:
            self._sync.addParam(servo_id)

    def close(self) -> None:
        if self._port is not None:
            port, self._port, self._sync = self._port, None, None
            try:
                port.closePort()
            except OSError:  # an unplugged adapter: the port is gone either way
                pass

    def read_positions(self) -> np.ndarray:
        """Raw Present Position of every servo (int64, in `ids` order); DeviceError on failure."""
        if self._sync is None:
            raise DeviceError(f"leader on {self.port_name}: the bus is not open")
        try:
            result = self._sync.txRxPacket()
            if result != COMM_SUCCESS:
                why = self._result_text(result)
                unanswered = self._unanswered()
                raise DeviceError(f"leader on {self.port_name}: sync read failed ({why})"
                                  + (f"; {unanswered}" if unanswered else ""))
            raw = [self._sync.getData(i, ADDR_PRESENT_POSITION, SIZE_PRESENT_POSITION) for i in self.ids]
        except OSError as error:  # the adapter went away mid-transfer; the SDK's port is unusable now
            self.close()
            raise DeviceError(f"leader on {self.port_name}: bus failed ({error}); unplugged?") from error
        # Present Position is a signed 32-bit count; the SDK hands back its unsigned bits.
        return np.array(raw, dtype=np.int64).astype(np.uint32).view(np.int32).astype(np.int64)

    def _unanswered(self) -> str:
        """'servo 4: There is no status packet!, ...' for the servos that fail a ping, or ''."""
        failures = []
        for servo_id in self.ids:
            _, result, _ = self._packets.ping(self._port, servo_id)
            if result != COMM_SUCCESS:
                failures.append(f"servo {servo_id}: {self._result_text(result)}")
        return ", ".join(failures)

    def _result_text(self, result: int) -> str:
        return self._packets.getTxRxResult(result).removeprefix("[TxRxResult] ")
