"""Episode bags: one rosbag2 directory per demonstration, written and read with `rosbags`.

Layout of an episode directory (readable by `ros2 bag info` once closed):

    <episode>/
        <episode>.mcap | <episode>.db3   storage file (rosbags writer)
        metadata.yaml                    rosbag2 metadata; written on close only
        episode.json                     instruction, task, robot, operator, topics, success,
                                         interruption, operator note, ... (the recorder's metadata)

Messages arrive already CDR-serialized (rclpy `raw=True` subscriptions) and are written as is.

Crash tolerance. rosbags' MCAP writer keeps the open chunk in memory (up to 1 MiB) and writes the
summary and metadata.yaml only on close, so a killed recorder would lose the open chunk and leave a
file the rosbags reader refuses ("File end magic is invalid"). `EpisodeWriter` therefore closes
the chunk and flushes the file (sqlite3: commits) once `flush_period` has passed, checked on every
write and by the owner's timer (`poll`): a killed process loses at most 2 x flush_period (default
0.5 s). Power loss can cost more: nothing is fsync'ed. `read_messages` reads such an unfinished
bag by scanning the storage file up to its last complete record; `recover` rewrites it into a
complete bag.

Decoding. rmw_fastrtps pads the buffers it serializes with up to tens of bytes of alignment slack
after the last field, which rosbags' `deserialize_cdr` rejects ("CDR message size mismatch") for
common types such as JointState with empty velocity/effort. `decode` runs rosbags' generated
deserializer directly and ignores that trailing slack.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import time
from contextlib import closing
from pathlib import Path
from typing import Iterator, NamedTuple

from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
META_FILE = "episode.json"
MCAP_MAGIC = b"\x89MCAP0\r\n"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

# Message types of the topics an episode holds (the topic names: evo1_ros.robot.topics; the
# recorder stores the layout it used in episode.json).
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
STRING_TYPE = "std_msgs/msg/String"
BOOL_TYPE = "std_msgs/msg/Bool"


class BagMessage(NamedTuple):
    topic: str
    msgtype: str
    log_ns: int  # recorder clock when the message arrived
    raw: bytes  # CDR, as serialized by the publisher


class BagError(RuntimeError):
    pass


def _write_json(path: Path, data: dict) -> None:
    # Write-then-rename: a crash never leaves a half-written episode.json.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


class EpisodeWriter:
    """Writes one episode: `write()` serialized messages, then `close(success)` or `discard()`.

    topics: topic -> message type ("sensor_msgs/msg/Image"); meta: anything JSON, stored in
    episode.json (instruction, robot, cameras, topics, operator_note, ...). `close` adds the
    outcome: success (True, False or None: not marked) and `interrupted` (why the episode was cut
    short, e.g. a teleop device failed; None when it ended as the operator meant).
    """

    def __init__(self, path: str | Path, topics: dict[str, str], meta: dict,
                 storage: str = "mcap", flush_period: float = 0.5):
        self.path = Path(path)
        self.flush_period = flush_period
        self.meta = {"started_ns": time.time_ns(), **meta, "success": None, "interrupted": None, "storage": storage}
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGES[storage])
        self._writer.open()
        # All connections up front: the MCAP writer puts schema and channel records into the open
        # chunk, so they reach the disk with the first flush, before any message that needs them.
        self._connections = {
            topic: self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            for topic, msgtype in topics.items()
        }
        self.counts = dict.fromkeys(topics, 0)
        self._pending = False  # messages written since the last flush
        _write_json(self.path / META_FILE, self.meta)
        self.flush()  # the MCAP header: a bag killed before its first flushed message still opens

    def write(self, topic: str, log_ns: int, raw: bytes) -> None:
        self._writer.write(self._connections[topic], log_ns, raw)
        self.counts[topic] += 1
        self._pending = True
        self.poll()

    def poll(self) -> None:
        """Flush if `flush_period` has passed since the last flush. Call it on a timer with that
        period too, so data reaches the disk when messages stop arriving."""
        if self._pending and time.monotonic() - self._last_flush >= self.flush_period:
            self.flush()

    def flush(self) -> None:
        # rosbags has no public flush: close the open MCAP chunk (writes it and its message
        # index) and flush the file, or commit the sqlite3 transaction.
        storage = self._writer.storage
        if self._writer.storage_plugin == StoragePlugin.SQLITE3:
            storage.conn.commit()
        else:
            if self._pending:  # a chunk without messages would have an empty time range
                storage.close_chunk()
            storage.bio.flush()
        self._pending = False
        self._last_flush = time.monotonic()

    def close(self, success: bool | None, note: str | None = None, interrupted: str | None = None) -> Path:
        self.meta.update(success=success, interrupted=interrupted, ended_ns=time.time_ns(),
                         message_counts=self.counts)
        if note is not None:
            self.meta["operator_note"] = note
        # A copy in metadata.yaml, so the metadata survives `ros2 bag convert` and friends.
        self._writer.set_custom_data("evo1_ros.episode", json.dumps(self.meta, sort_keys=True))
        self._writer.close()
        _write_json(self.path / META_FILE, self.meta)
        return self.path

    def discard(self) -> None:
        self._writer.abort()
        shutil.rmtree(self.path)


def read_meta(path: str | Path) -> dict:
    """episode.json of a bag, or {} for bags recorded by other tools."""
    file = Path(path) / META_FILE
    return json.loads(file.read_text()) if file.exists() else {}


def is_complete(path: str | Path) -> bool:
    return (Path(path) / "metadata.yaml").exists()


def read_messages(path: str | Path, topics: set[str] | None = None) -> Iterator[BagMessage]:
    """Messages of a bag in log-time order (complete bags) or file order (unfinished bags, which
    the recorder wrote in arrival order)."""
    path = Path(path)
    if not path.is_dir():
        raise BagError(f"{path}: not a bag directory")
    if is_complete(path):
        try:
            with Reader(path) as reader:
                connections = [c for c in reader.connections if topics is None or c.topic in topics]
                for conn, log_ns, raw in reader.messages(connections=connections):
                    yield BagMessage(conn.topic, conn.msgtype, log_ns, raw)
        except ReaderError as exc:
            raise BagError(f"{path}: {exc}") from exc
        return
    file = _storage_file(path)
    messages = _scan_mcap(file) if file.suffix == ".mcap" else _scan_sqlite3(file)
    yield from (m for m in messages if topics is None or m.topic in topics)


def _storage_file(path: Path) -> Path:
    files = sorted(path.glob("*.mcap")) + sorted(path.glob("*.db3"))
    if len(files) != 1:
        raise BagError(f"{path}: expected one .mcap or .db3 storage file, found {len(files)}")
    return files[0]


def _scan_mcap(file: Path) -> Iterator[BagMessage]:
    """Messages of an MCAP file without summary or footer, up to its last complete record."""
    data = memoryview(file.read_bytes())
    if not MCAP_MAGIC.startswith(bytes(data[:8])):
        raise BagError(f"{file}: not an MCAP file")
    schemas: dict[int, str] = {}  # schema id -> message type
    channels: dict[int, tuple[str, str]] = {}  # channel id -> (topic, message type)

    def records(buf: memoryview, pos: int) -> Iterator[tuple[int, memoryview]]:
        while pos + 9 <= len(buf):
            op, size = buf[pos], struct.unpack_from("<Q", buf, pos + 1)[0]
            if pos + 9 + size > len(buf):
                return  # the record the crash cut off
            yield op, buf[pos + 9: pos + 9 + size]
            pos += 9 + size

    def string(buf: memoryview, pos: int) -> tuple[str, int]:
        n = struct.unpack_from("<I", buf, pos)[0]
        return bytes(buf[pos + 4: pos + 4 + n]).decode(), pos + 4 + n

    def parse(op: int, rec: memoryview) -> Iterator[BagMessage]:
        if op == 0x03:  # schema: id, name, encoding, data
            schemas[struct.unpack_from("<H", rec)[0]] = string(rec, 2)[0]
        elif op == 0x04:  # channel: id, schema id, topic, encoding, metadata
            cid, sid = struct.unpack_from("<HH", rec)
            channels[cid] = (string(rec, 4)[0], schemas[sid])
        elif op == 0x05:  # message: channel, sequence, log time, publish time, data
            cid, _, log_ns, _ = struct.unpack_from("<HIQQ", rec)
            yield BagMessage(*channels[cid], log_ns, bytes(rec[22:]))
        elif op == 0x06:  # chunk: start, end, size, crc, compression, records
            compression, pos = string(rec, 28)
            if compression:
                raise BagError(f"{file}: compressed chunk ({compression}); not written by us")
            for inner in records(rec[pos + 8:], 0):
                yield from parse(*inner)

    for op, rec in records(data, 8):
        yield from parse(op, rec)


def _scan_sqlite3(file: Path) -> Iterator[BagMessage]:
    # A normal (not immutable) connection rolls back the transaction the crash left open.
    with closing(sqlite3.connect(file)) as db:
        yield from (BagMessage(*row) for row in db.execute(
            "SELECT topics.name, topics.type, messages.timestamp, messages.data FROM messages "
            "JOIN topics ON messages.topic_id = topics.id ORDER BY messages.timestamp"))


def recover(path: str | Path) -> int:
    """Rewrite an unfinished bag (recorder killed) into a complete one; returns messages kept."""
    path = Path(path)
    if is_complete(path):
        return sum(1 for _ in read_messages(path))
    messages = list(read_messages(path))
    meta = read_meta(path)
    storage = "mcap" if _storage_file(path).suffix == ".mcap" else "sqlite3"
    # rosbags names the storage file after its directory: write the new bag under the same name
    # in a staging folder, then swap, keeping the original until the new one is in place.
    staging = path.with_name(path.name + ".recovering") / path.name
    writer = EpisodeWriter(staging, {m.topic: m.msgtype for m in messages},
                           {**meta, "recovered": True}, storage=storage)
    for m in messages:
        writer.write(m.topic, m.log_ns, m.raw)
    writer.close(success=meta.get("success"), interrupted=meta.get("interrupted"))
    backup = path.with_name(path.name + ".unrecovered")
    path.rename(backup)
    staging.rename(path)
    staging.parent.rmdir()
    shutil.rmtree(backup)
    return len(messages)


def decode(msgtype: str, raw: bytes | memoryview) -> object:
    """Deserialize CDR bytes with rosbags' generated code, tolerating rmw's trailing slack."""
    raw = memoryview(raw)
    if len(raw) < 4 or bytes(raw[:2]) != b"\x00\x01":
        raise BagError(f"{msgtype}: not little-endian CDR")
    msgdef = TYPESTORE.get_msgdef(msgtype)
    try:
        message, _ = msgdef.deserialize_cdr_le(raw[4:], 0, msgdef.cls, TYPESTORE)
    except (SerdeError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise BagError(f"{msgtype}: cannot deserialize: {exc}") from exc
    return message
