"""Recorder node over real rclpy/DDS: record -> convert round trip, services, SIGKILL, SIGINT."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from evo1_ros.data import bag  # noqa: E402
from evo1_ros.data.convert import convert  # noqa: E402
from evo1_ros.nodes.recorder import RecorderNode  # noqa: E402
from evo1_ros.robot import topics  # noqa: E402
from test_data_convert import CAMERAS, synthetic_messages, write_bag  # noqa: E402

pytestmark = pytest.mark.ros
TYPES = {bag.IMAGE_TYPE: Image, bag.COMPRESSED_IMAGE_TYPE: CompressedImage, bag.JOINT_STATE_TYPE: JointState,
         bag.TRAJECTORY_TYPE: JointTrajectory, bag.STRING_TYPE: String, bag.BOOL_TYPE: Bool}


class Harness:
    """An rclpy context spinning the given nodes in a thread, plus a publisher/client node."""

    def __init__(self, make_nodes=lambda context: []):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.nodes = make_nodes(self.context)
        self.node = rclpy.create_node("test_harness", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        for node in [*self.nodes, self.node]:
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def publishers(self, types: dict[str, str]) -> dict:
        pubs = {t: self.node.create_publisher(TYPES[m], t, 100) for t, m in types.items()}
        deadline = time.monotonic() + 20
        while any(p.get_subscription_count() == 0 for p in pubs.values()):
            assert time.monotonic() < deadline, "recorder never subscribed"
            time.sleep(0.05)
        return pubs

    def call(self, service: str) -> Trigger.Response:
        client = self.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=20), service
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + 10
        while not future.done():
            assert time.monotonic() < deadline, f"{service} did not answer"
            time.sleep(0.01)
        return future.result()

    def close(self):
        self.executor.shutdown()
        for node in [*self.nodes, self.node]:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


def publish_in_real_time(pubs, messages):
    """Publish (topic, stamp ns, msg) paced by their stamps (relative to the first)."""
    start = time.monotonic()
    for topic, ns, msg in messages:
        delay = start + (ns - messages[0][1]) / 1e9 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pubs[topic].publish(msg)


def test_record_then_convert_matches_the_published_episode(tmp_path):
    params = [Parameter("output_dir", value=str(tmp_path / "episodes")),
              Parameter("cameras", value=list(CAMERAS)),
              Parameter("instruction", value="stack the cubes"),
              Parameter("operator_note", value="first try"),
              Parameter("flush_period", value=0.2)]
    h = Harness(lambda ctx: [RecorderNode(context=ctx, parameter_overrides=params)])
    try:
        recorder = h.nodes[0]
        pubs = h.publishers(recorder.topics)
        assert not h.call("/recorder/success").success  # nothing recording yet
        started = h.call("/recorder/start")
        assert started.success, started.message
        assert not h.call("/recorder/start").success  # one episode at a time
        messages = synthetic_messages(1.0)
        publish_in_real_time(pubs, messages)
        pubs[topics.INSTRUCTION].publish(String(data="stack the cubes"))
        time.sleep(0.5)  # let the last messages arrive
        stopped = h.call("/recorder/success")
        assert stopped.success, stopped.message
    finally:
        h.close()

    (episode,) = (tmp_path / "episodes").iterdir()
    assert bag.is_complete(episode)
    meta = bag.read_meta(episode)
    assert meta["success"] is True and meta["instruction"] == "stack the cubes"
    assert meta["operator_note"] == "first try" and meta["cameras"] == ["base", "wrist"]

    recorded = list(bag.read_messages(episode))
    for topic in [*CAMERAS.values(), topics.JOINT_STATES, topics.TRAJECTORY]:
        sent = [ns for t, ns, _ in messages if t == topic]
        got = [bag.decode(m.msgtype, m.raw).header.stamp for m in recorded if m.topic == topic]
        assert [s.sec * 1_000_000_000 + s.nanosec for s in got] == sent, topic
    assert [bag.decode(m.msgtype, m.raw).data for m in recorded
            if m.topic == topics.INSTRUCTION] == ["stack the cubes"]
    assert meta["message_counts"][topics.JOINT_STATES] == 100

    # Converting the recorded bag gives exactly what converting the published messages gives.
    via_dds = convert([episode], tmp_path / "via_dds", rate=10, image_size=8)
    direct = convert([write_bag(tmp_path / "direct", messages)], tmp_path / "direct_ds",
                     rate=10, image_size=8)
    assert via_dds["episodes"][0]["length"] == direct["episodes"][0]["length"] == 10
    a = np.load(tmp_path / "via_dds" / "episode_000000.npz")
    b = np.load(tmp_path / "direct_ds" / "episode_000000.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_compressed_camera_topics_are_recorded_and_convert(tmp_path):
    # Cameras on another machine send image_transport's <topic>/compressed (JPEG here): the recorder
    # records those, and convert reads them into the same dataset the raw frames give, within JPEG's error.
    from evo1_ros.nodes.messages import array_to_compressed

    params = [Parameter("output_dir", value=str(tmp_path / "episodes")), Parameter("cameras", value=list(CAMERAS)),
              Parameter("instruction", value="stack the cubes"), Parameter("image_transport", value="compressed")]
    h = Harness(lambda ctx: [RecorderNode(context=ctx, parameter_overrides=params)])
    messages = synthetic_messages(1.0)
    compressed = []
    for topic, ns, msg in messages:
        if topic in CAMERAS.values():
            rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
            rgb = rgb[..., ::-1] if msg.encoding == "bgr8" else rgb
            msg, topic = array_to_compressed(rgb, "jpeg", stamp=msg.header.stamp), topic + "/compressed"
        compressed.append((topic, ns, msg))
    try:
        recorder = h.nodes[0]
        assert set(recorder.layout["cameras"].values()) == {t + "/compressed" for t in CAMERAS.values()}
        pubs = h.publishers(recorder.topics)
        assert h.call("/recorder/start").success
        publish_in_real_time(pubs, compressed)
        time.sleep(0.5)
        assert h.call("/recorder/success").success
    finally:
        h.close()
    (episode,) = (tmp_path / "episodes").iterdir()
    types = {m.topic: m.msgtype for m in bag.read_messages(episode)}
    assert all(types[t + "/compressed"] == bag.COMPRESSED_IMAGE_TYPE for t in CAMERAS.values())
    via_dds = convert([episode], tmp_path / "ds", rate=10, image_size=8)
    direct = convert([write_bag(tmp_path / "direct", messages)], tmp_path / "direct_ds", rate=10, image_size=8)
    assert via_dds["episodes"][0]["length"] == direct["episodes"][0]["length"] == 10
    a, b = np.load(tmp_path / "ds" / "episode_000000.npz"), np.load(tmp_path / "direct_ds" / "episode_000000.npz")
    np.testing.assert_array_equal(a["state"], b["state"])
    from evo1_ros.data.images import decode_frame

    for cam in CAMERAS:
        for step in range(10):
            frames = [decode_frame(d[f"frames.{cam}"][d[f"offsets.{cam}"][step]:d[f"offsets.{cam}"][step + 1]])
                      for d in (a, b)]
            assert np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= 8, (cam, step)


def test_discard_removes_the_episode(tmp_path):
    params = [Parameter("output_dir", value=str(tmp_path)), Parameter("storage", value="sqlite3")]
    h = Harness(lambda ctx: [RecorderNode(context=ctx, parameter_overrides=params)])
    try:
        assert h.call("/recorder/start").success
        assert len(list(tmp_path.iterdir())) == 1
        assert h.call("/recorder/discard").success
        assert list(tmp_path.iterdir()) == []
        assert h.call("/recorder/start").success
        assert h.call("/recorder/failure").success
    finally:
        h.close()
    (episode,) = tmp_path.iterdir()
    assert bag.read_meta(episode)["success"] is False and bag.is_complete(episode)


def test_episode_metadata_outcomes_interruptions_and_the_running_count(tmp_path):
    params = [Parameter("output_dir", value=str(tmp_path)), Parameter("cameras", value=["base", "wrist"]),
              Parameter("camera_serials", value="base:_123456789012,wrist:234567890123")]
    h = Harness(lambda ctx: [RecorderNode(context=ctx, parameter_overrides=params)])
    try:
        recorder = h.nodes[0]
        (refused,) = recorder.set_parameters([Parameter("camera_serials", value="side:1")])
        assert not refused.successful and "name:serial with a name of ['base', 'wrist']" in refused.reason
        recorder.set_parameters([Parameter("task", value="pick_place_can"), Parameter("operator", value="ada"),
                                 Parameter("teleop_source", value="spacemouse"), Parameter("scene", value="wide"),
                                 Parameter("seed", value=1234)])
        assert h.call("/recorder/start").success
        assert "this session: 1 kept (1 success, 0 failure" in h.call("/recorder/success").message
        for seed, event in ((-1, "failure"), (-1, "stop")):
            recorder.set_parameters([Parameter("seed", value=seed), Parameter("scene", value="")])
            assert h.call("/recorder/start").success
            assert h.call(f"/recorder/{event}").success
        assert h.call("/recorder/start").success
        recorder.set_parameters([Parameter("interruption", value="teleop device failed: SpaceMouse unplugged")])
        stopped = h.call("/recorder/stop")
        assert stopped.message.startswith("saved (interrupted: teleop device failed: SpaceMouse unplugged)")
        assert recorder.get_parameter("interruption").value == ""  # the next episode starts clean
        assert h.call("/recorder/start").success
        discarded = h.call("/recorder/discard").message
        assert discarded.endswith("this session: 4 kept (1 success, 1 failure, 1 unmarked, 1 interrupted), "
                                  "1 discarded")
        assert not h.call("/recorder/stop").success  # nothing recording
    finally:
        h.close()
    metas = [bag.read_meta(e) for e in sorted(tmp_path.iterdir())]
    assert [m["success"] for m in metas] == [True, False, None, None]
    assert [m["interrupted"] for m in metas] == [None, None, None, "teleop device failed: SpaceMouse unplugged"]
    first = metas[0]
    assert (first["task"], first["operator"], first["teleop_source"]) == ("pick_place_can", "ada", "spacemouse")
    assert (first["scene"], first["seed"], metas[1]["scene"], metas[1]["seed"]) == ("wide", 1234, None, None)
    assert first["camera_serials"] == {"base": "123456789012", "wrist": "234567890123"}
    assert first["robot"] == "xarm6" and first["topics"]["intervention"] == topics.INTERVENTION


def test_parameters_are_applied_from_the_next_episode_or_refused(tmp_path):
    recorder = None

    def make(ctx):
        nonlocal recorder
        recorder = RecorderNode(context=ctx, parameter_overrides=[Parameter("output_dir", value=str(tmp_path / "a"))])
        return [recorder]

    h = Harness(make)
    try:
        (refused,) = recorder.set_parameters([Parameter("storage", value="zip")])
        assert not refused.successful and "'mcap', 'sqlite3'" in refused.reason and recorder.storage == "mcap"
        assert "read-only" in recorder.set_parameters([Parameter("cameras", value=["side"])])[0].reason
        assert all(r.successful for r in recorder.set_parameters([Parameter("storage", value="sqlite3"),
                                                                  Parameter("output_dir", value=str(tmp_path / "b"))]))
        assert h.call("/recorder/start").success
        assert h.call("/recorder/success").success
    finally:
        h.close()
    (episode,) = (tmp_path / "b").iterdir()
    assert list(episode.glob("*.db3"))  # the new storage, in the new directory


def test_sigkill_mid_episode_loses_at_most_one_second(tmp_path):
    recorder = subprocess.Popen(
        [sys.executable, "-m", "evo1_ros.nodes.recorder", "--ros-args",
         "-p", f"output_dir:={tmp_path}", "-p", "cameras:=[base]", "-p", "flush_period:=0.5"],
        env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    h = Harness()
    sent = {topics.JOINT_STATES: [], CAMERAS["base"]: []}
    try:
        pubs = h.publishers({topics.JOINT_STATES: bag.JOINT_STATE_TYPE,
                             CAMERAS["base"]: bag.IMAGE_TYPE})
        assert h.call("/recorder/start").success
        frame = np.zeros((48, 64, 3), np.uint8).tobytes()
        end = time.monotonic() + 2.5
        i = 0
        while time.monotonic() < end:
            now = time.time_ns()
            js = JointState(name=["joint1"], position=[float(i)])
            js.header.stamp.sec, js.header.stamp.nanosec = divmod(now, 1_000_000_000)
            pubs[topics.JOINT_STATES].publish(js)
            sent[topics.JOINT_STATES].append(now)
            if i % 3 == 0:
                img = Image(height=48, width=64, encoding="rgb8", step=192, data=frame)
                img.header.stamp = js.header.stamp
                pubs[CAMERAS["base"]].publish(img)
                sent[CAMERAS["base"]].append(now)
            i += 1
            time.sleep(0.01)
        recorder.send_signal(signal.SIGKILL)
        killed = time.time_ns()
        assert recorder.wait(timeout=10) == -signal.SIGKILL
    finally:
        if recorder.poll() is None:
            recorder.kill()
        h.close()

    (episode,) = tmp_path.iterdir()
    assert not bag.is_complete(episode)
    for topic, stamps in sent.items():
        got = []
        for m in bag.read_messages(episode, {topic}):
            s = bag.decode(m.msgtype, m.raw).header.stamp
            got.append(s.sec * 1_000_000_000 + s.nanosec)
        older = [s for s in stamps if s <= killed - 1_000_000_000]
        assert len(older) > 50 if topic == topics.JOINT_STATES else len(older) > 15
        assert got[: len(older)] == older, f"{topic}: lost messages older than 1 s"
        assert set(got) <= set(stamps)
    salvaged = [m.raw for m in bag.read_messages(episode)]
    assert bag.recover(episode) == len(salvaged)
    assert bag.is_complete(episode) and bag.read_meta(episode)["recovered"] is True
    assert sorted(m.raw for m in bag.read_messages(episode)) == sorted(salvaged)


def test_sigint_mid_episode_closes_the_bag(tmp_path):
    recorder = subprocess.Popen(
        [sys.executable, "-m", "evo1_ros.nodes.recorder", "--ros-args", "-p",
         f"output_dir:={tmp_path}", "-p", "instruction:=wave"],
        env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    h = Harness()
    try:
        pub = h.publishers({topics.JOINT_STATES: bag.JOINT_STATE_TYPE})[topics.JOINT_STATES]
        assert h.call("/recorder/start").success
        for i in range(20):
            pub.publish(JointState(name=["joint1"], position=[float(i)]))
            time.sleep(0.01)
        time.sleep(0.3)
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(timeout=10) == 0
    finally:
        if recorder.poll() is None:
            recorder.kill()
        h.close()
    (episode,) = tmp_path.iterdir()
    assert bag.is_complete(episode)
    meta = bag.read_meta(episode)
    assert meta["success"] is None and meta["instruction"] == "wave"
    assert meta["message_counts"][topics.JOINT_STATES] == 20
