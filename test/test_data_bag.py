"""Episode bags: write, read back, crash tolerance, recovery, decoding of rclpy-serialized CDR."""

import shutil
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo1_ros.data import bag

rclpy_serialization = pytest.importorskip("rclpy.serialization")
from sensor_msgs.msg import Image, JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

pytestmark = pytest.mark.ros  # messages are serialized with rclpy, as the recorder gets them

TOPICS = {"/joint_states": bag.JOINT_STATE_TYPE, "/img": bag.IMAGE_TYPE}


def joint_state(i: int) -> bytes:
    # Compare bytes with these, not with a fresh serialization: rmw leaves the trailing slack
    # uninitialised, so serializing the same message twice can give different bytes.
    msg = JointState(name=["joint1", "joint2"], position=[i * 0.1, -i * 0.1])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(i * 10_000_000, 1_000_000_000)
    return rclpy_serialization.serialize_message(msg)


RAW = [joint_state(i) for i in range(30)]


def write_joint_states(path, n, storage="mcap", flush_period=0.0):
    writer = bag.EpisodeWriter(path, TOPICS, {"instruction": "pick"}, storage, flush_period)
    for i in range(n):
        writer.write("/joint_states", i * 10_000_000, RAW[i])
    return writer


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_and_metadata(tmp_path, storage):
    path = tmp_path / "ep"
    write_joint_states(path, 20, storage).close(True, "clean run")
    messages = list(bag.read_messages(path))
    assert [m.log_ns for m in messages] == [i * 10_000_000 for i in range(20)]
    assert [bag.decode(m.msgtype, m.raw).position[0] for m in messages] == pytest.approx(
        [i * 0.1 for i in range(20)])
    meta = bag.read_meta(path)
    assert meta["instruction"] == "pick" and meta["success"] is True
    assert meta["operator_note"] == "clean run" and meta["storage"] == storage
    assert meta["message_counts"] == {"/joint_states": 20, "/img": 0}
    assert "evo1_ros.episode" in (path / "metadata.yaml").read_text()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_unfinished_bag_reads_back_what_was_flushed(tmp_path, storage):
    # A copy of the directory taken mid-episode is what a SIGKILL leaves behind.
    path = tmp_path / "ep"
    writer = write_joint_states(path, 30, storage, flush_period=0.0)  # flushes on every write
    shutil.copytree(path, tmp_path / "crashed")
    writer.close(True)
    crashed = tmp_path / "crashed"
    assert not bag.is_complete(crashed)
    assert [m.raw for m in bag.read_messages(crashed)] == RAW
    assert bag.read_meta(crashed)["success"] is None

    assert bag.recover(crashed) == 30
    assert bag.is_complete(crashed)
    assert [m.raw for m in bag.read_messages(crashed)] == RAW


def test_unflushed_messages_stay_in_memory_until_the_flush_period(tmp_path):
    path = tmp_path / "ep"
    writer = write_joint_states(path, 5, flush_period=3600.0)
    assert list(bag.read_messages(path)) == []  # still in the open chunk
    writer.flush()
    assert len(list(bag.read_messages(path))) == 5
    writer.close(False)


def test_any_truncation_of_the_mcap_file_reads_a_prefix(tmp_path):
    path = tmp_path / "ep"
    write_joint_states(path, 12).close(True)
    data = (path / "ep.mcap").read_bytes()
    expected = RAW[:12]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "episode.json").write_text("{}")
    for size in range(0, len(data), 7):
        (cut / "cut.mcap").write_bytes(data[:size])
        got = [m.raw for m in bag.read_messages(cut)]
        assert got == expected[: len(got)]
    assert len(got) == 12
    (cut / "cut.mcap").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(bag.BagError, match="not an MCAP file"):
        list(bag.read_messages(cut))


def test_memory_stays_bounded_over_a_long_episode(tmp_path):
    frame = Image(height=480, width=640, encoding="rgb8", step=640 * 3,
                  data=bytes(640 * 480 * 3))
    raw = rclpy_serialization.serialize_message(frame)
    writer = bag.EpisodeWriter(tmp_path / "ep", TOPICS, {}, flush_period=3600.0)
    tracemalloc.start()
    for i in range(60):  # 55 MB of frames
        writer.write("/img", i, raw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    writer.close(True)
    assert peak < 8 * len(raw)
    assert sum(1 for _ in bag.read_messages(tmp_path / "ep")) == 60


def test_discard_removes_the_episode(tmp_path):
    write_joint_states(tmp_path / "ep", 3).discard()
    assert not (tmp_path / "ep").exists()


def test_writer_refuses_an_existing_episode(tmp_path):
    write_joint_states(tmp_path / "ep", 1).close(True)
    with pytest.raises(Exception, match="exists"):
        write_joint_states(tmp_path / "ep", 1)


names = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=8),
                 max_size=7)
floats = st.floats(allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(names=names, data=st.data(), frame=st.text(max_size=9).filter(lambda s: "\0" not in s))
def test_decode_reads_what_rclpy_serialized(names, data, frame):
    # rclpy's buffers carry trailing alignment slack that rosbags' deserialize_cdr rejects.
    n = len(names)
    msg = JointState(name=names, position=data.draw(st.lists(floats, min_size=n, max_size=n)),
                     effort=data.draw(st.sampled_from([[], [1.5] * n])))
    msg.header.frame_id = frame
    msg.header.stamp.sec = data.draw(st.integers(-(2**31), 2**31 - 1))
    got = bag.decode(bag.JOINT_STATE_TYPE, rclpy_serialization.serialize_message(msg))
    assert list(got.name) == names and got.header.frame_id == frame
    assert got.header.stamp.sec == msg.header.stamp.sec
    assert np.array_equal(got.position, np.array(msg.position)) and len(got.velocity) == 0
    assert np.array_equal(got.effort, np.array(msg.effort))

    traj = JointTrajectory(joint_names=names, points=[
        JointTrajectoryPoint(positions=msg.position, velocities=data.draw(
            st.sampled_from([[], [0.5] * n])))
        for _ in range(data.draw(st.integers(0, 3)))])
    got = bag.decode(bag.TRAJECTORY_TYPE, rclpy_serialization.serialize_message(traj))
    assert [list(p.positions) for p in got.points] == [list(p.positions) for p in traj.points]
    assert [len(p.velocities) for p in got.points] == [len(p.velocities) for p in traj.points]


def test_decode_rejects_truncated_data():
    raw = RAW[3]
    with pytest.raises(bag.BagError, match="cannot deserialize"):
        bag.decode(bag.JOINT_STATE_TYPE, raw[:30])


def test_episodes_command_lists_outcomes_and_recovers_unfinished_bags(tmp_path, capsys):
    from evo1_ros import cli

    def episode(name, success=None, interrupted=None, close=True):
        writer = bag.EpisodeWriter(tmp_path / name, {"/joint_states": bag.JOINT_STATE_TYPE},
                               {"instruction": "stack the cubes", "task": "stack_cans", "operator": "ada",
                                "teleop_source": "leader"})
        writer.write("/joint_states", 1, RAW[0])
        writer.flush()
        if close:
            writer.close(success, interrupted=interrupted)

    episode("a", success=True)
    episode("b", success=False)
    episode("c")
    episode("d", interrupted="teleop device failed: leader on /dev/ttyUSB0: bus failed")
    episode("e", close=False)  # the recorder was killed
    assert cli.main(["episodes", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("a  success  ") and "stack_cans  ada  leader  'stack the cubes'" in lines[0]
    assert [line.split("  ")[1] for line in lines[1:5]] == [
        "failure", "unmarked", "interrupted (teleop device failed: leader on /dev/ttyUSB0: bus failed)", "unfinished"]
    assert lines[5].startswith("5 episodes: 1 success, 1 failure, 1 unmarked, 1 interrupted, 1 unfinished")
    assert cli.main(["episodes", str(tmp_path / "e"), "--recover"]) == 0
    out = capsys.readouterr().out
    assert "e: recovered 1 messages" in out and "e  unmarked  " in out and bag.is_complete(tmp_path / "e")
    assert cli.main(["episodes", str(tmp_path / "missing")]) == 1
    assert "missing: not a directory" in capsys.readouterr().err
