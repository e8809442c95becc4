"""A chain of Dynamixel X-series servos emulated behind a pseudo-terminal, speaking Protocol 2.0
as the ROBOTIS e-manual specifies it: packet framing, byte stuffing, CRC-16, PING, READ, WRITE and
SYNC_READ over the control table. The code under test opens `bus.port` (the pty's slave side)
with the unmodified dynamixel-sdk, exactly as it opens /dev/ttyUSB0.

Faults for the tests: `silent` ids do not answer, `corrupt_crc` sends status packets with a wrong
CRC, `unplug()` closes the master side (reads on the port then fail, as when the adapter is pulled).
"""

from __future__ import annotations

import os
import select
import struct
import threading
import tty

HEADER = b"\xff\xff\xfd\x00"
PING, READ, WRITE, SYNC_READ, STATUS = 0x01, 0x02, 0x03, 0x82, 0x55
BROADCAST = 0xFE
MODEL_XL330_M288 = 1200
ADDR_MODEL, ADDR_FIRMWARE, ADDR_TORQUE_ENABLE, ADDR_PRESENT_POSITION = 0, 6, 64, 132
ERROR_ACCESS = 0x07


def _crc_table() -> list[int]:
    """CRC-16 with polynomial 0x8005, MSB first (the e-manual's update_crc)."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD in the instruction/parameter field."""
    out = bytearray()
    for byte in payload:
        out.append(byte)
        if out[-3:] == b"\xff\xff\xfd":
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    out = bytearray()
    for byte in payload:
        if byte == 0xFD and out[-3:] == b"\xff\xff\xfd":
            continue  # the stuffed byte
        out.append(byte)
    return bytes(out)


def packet(servo_id: int, body: bytes, corrupt_crc: bool = False) -> bytes:
    body = stuff(body)
    frame = HEADER + bytes([servo_id]) + struct.pack("<H", len(body) + 2) + body
    crc = crc16(frame) ^ (0x5A5A if corrupt_crc else 0)
    return frame + struct.pack("<H", crc)


class Servo:
    """One servo's control table (the addresses a leader reader touches)."""

    def __init__(self, servo_id: int, position: int = 2048):
        self.id = servo_id
        self.table = bytearray(256)
        struct.pack_into("<H", self.table, ADDR_MODEL, MODEL_XL330_M288)
        self.table[ADDR_FIRMWARE] = 52
        self.position = position

    @property
    def position(self) -> int:
        return struct.unpack_from("<i", self.table, ADDR_PRESENT_POSITION)[0]

    @position.setter
    def position(self, value: int) -> None:
        struct.pack_into("<i", self.table, ADDR_PRESENT_POSITION, value)


class DynamixelBus:
    """Servos with the given ids behind a pty; use as a context manager (starts/stops the thread)."""

    def __init__(self, ids):
        self.servos = {i: Servo(i) for i in ids}
        self.silent: set[int] = set()
        self.corrupt_crc = False
        self.instructions: list[int] = []  # every valid instruction code received, in order
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        # The SDK opens the slave by name. Holding it open too keeps the master readable before the
        # SDK opens it and after it closes it (with no slave open, reading the master fails).
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dynamixel-bus", daemon=True)

    def __enter__(self) -> DynamixelBus:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.unplug()

    def set_positions(self, positions: dict[int, int]) -> None:
        for servo_id, position in positions.items():
            self.servos[servo_id].position = position

    def unplug(self) -> None:
        if self._master is not None:
            master, self._master = self._master, None
            self._stop.set()
            os.close(master)
            os.close(self._slave)

    def _serve(self) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            master = self._master
            if master is None:
                return
            try:
                ready = select.select([master], [], [], 0.02)[0]
                if not ready:
                    continue
                buffer += os.read(master, 1024)
            except (OSError, ValueError):  # the pty closed under us (unplug)
                return
            while (found := self._take_packet(buffer)) is not None:
                self._answer(*found)

    @staticmethod
    def _take_packet(buffer: bytearray):
        """Cut the first complete instruction packet off `buffer`: (id, instruction, params) or None.
        Bytes before a header and packets with a wrong CRC are dropped, as a servo drops them."""
        while True:
            start = buffer.find(HEADER)
            if start < 0:
                del buffer[:-3]  # keep a possible header prefix
                return None
            del buffer[:start]
            if len(buffer) < 7:
                return None
            length = struct.unpack_from("<H", buffer, 5)[0]
            if len(buffer) < 7 + length:
                return None
            frame = bytes(buffer[: 7 + length])
            del buffer[: 7 + length]
            if struct.unpack_from("<H", frame, len(frame) - 2)[0] != crc16(frame[:-2]):
                continue
            body = unstuff(frame[7:-2])
            return frame[4], body[0], body[1:]

    def _reply(self, servo: Servo, params: bytes = b"", error: int = 0) -> None:
        if servo.id in self.silent or self._master is None:
            return
        try:
            os.write(self._master, packet(servo.id, bytes([STATUS, error]) + params, self.corrupt_crc))
        except OSError:
            pass

    def _answer(self, servo_id: int, instruction: int, params: bytes) -> None:
        self.instructions.append(instruction)
        if instruction == SYNC_READ and servo_id == BROADCAST:
            address, length = struct.unpack_from("<HH", params)
            for listed in params[4:]:  # each listed servo answers in turn
                if listed in self.servos:
                    self._reply(self.servos[listed], bytes(self.servos[listed].table[address: address + length]))
            return
        servo = self.servos.get(servo_id)
        if servo is None:
            return
        if instruction == PING:
            self._reply(servo, struct.pack("<HB", MODEL_XL330_M288, servo.table[ADDR_FIRMWARE]))
        elif instruction == READ:
            address, length = struct.unpack_from("<HH", params)
            self._reply(servo, bytes(servo.table[address: address + length]))
        elif instruction == WRITE:
            address = struct.unpack_from("<H", params)[0]
            if address == ADDR_PRESENT_POSITION:  # read-only
                self._reply(servo, error=ERROR_ACCESS)
                return
            servo.table[address: address + len(params) - 2] = params[2:]
            self._reply(servo)
