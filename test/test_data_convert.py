"""Bag -> `evo1` dataset conversion: synchronisation, values, stats, the torch Dataset, errors."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from evo1_ros import cli
from evo1_ros.data import bag
from evo1_ros.data.convert import ConversionError, convert
from evo1_ros.robot import topics
from evo1_ros.robot.xarm6 import JOINT_STATE_NAMES as NAMES

rclpy_serialization = pytest.importorskip("rclpy.serialization")
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

pytestmark = pytest.mark.ros  # messages are serialized with rclpy, as the recorder gets them

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # header stamps in wall-clock range
CAMERAS = {"base": topics.camera_topic("base"), "wrist": topics.camera_topic("wrist")}
LAYOUT = {"cameras": CAMERAS, "joint_states": topics.JOINT_STATES,
          "command": topics.TRAJECTORY, "intervention": topics.INTERVENTION}


def stamp(msg, ns):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)


def image(ns, value, encoding):
    # 16x12 frame of one colour (value, 2 * value, 255 - value) in RGB; bgr8 stores it reversed.
    rgb = np.empty((12, 16, 3), np.uint8)
    rgb[:] = (value, 2 * value % 256, 255 - value)
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    msg = Image(height=12, width=16, encoding=encoding, step=16 * 3,
                data=np.ascontiguousarray(pixels).tobytes())
    stamp(msg, ns)
    return msg


def joints(i):
    return [0.01 * i + 0.1 * j for j in range(6)] + [0.85 * (i % 2)]


def joint_state(ns, i):
    # Names in a different order than ours, to exercise the lookup by name.
    msg = JointState(name=list(reversed(NAMES)), position=list(reversed(joints(i))))
    stamp(msg, ns)
    return msg


def command(ns, i):
    msg = JointTrajectory(joint_names=list(NAMES),
                          points=[JointTrajectoryPoint(positions=[-x for x in joints(i)])])
    stamp(msg, ns)
    return msg


def synthetic_messages(seconds=1.0, camera_gap=None):
    """(topic, stamp ns, msg): cameras at 30 Hz, joints at 100 Hz, commands at 100 Hz (+3 ms)."""
    out = []
    for k in range(int(seconds * 30)):
        ns = T0 + round(k * 1e9 / 30)
        if camera_gap and camera_gap[0] <= ns - T0 < camera_gap[1]:
            continue
        out.append((CAMERAS["base"], ns, image(ns, k, "rgb8")))
        out.append((CAMERAS["wrist"], ns, image(ns, k + 100, "bgr8")))
    for i in range(int(seconds * 100)):
        ns = T0 + i * 10 * MS
        out.append((topics.JOINT_STATES, ns, joint_state(ns, i)))
        out.append((topics.TRAJECTORY, ns + 3 * MS, command(ns + 3 * MS, i)))
    return sorted(out, key=lambda m: m[1])


def with_intervention(messages, operator_commands):
    """`messages` plus the teleop node's intervention flag, sent 1 ms before each command (true
    before the commands whose index is in `operator_commands`: those the operator sent)."""
    commands = [ns for topic, ns, _ in messages if topic == topics.TRAJECTORY]
    flags = [(topics.INTERVENTION, ns - MS, Bool(data=i in operator_commands)) for i, ns in enumerate(commands)]
    return sorted(messages + flags, key=lambda m: m[1])


def write_bag(path, messages, meta=None, types=None):
    types = types or {**{t: bag.IMAGE_TYPE for t in CAMERAS.values()},
                      topics.JOINT_STATES: bag.JOINT_STATE_TYPE,
                      topics.TRAJECTORY: bag.TRAJECTORY_TYPE,
                      topics.INTERVENTION: bag.BOOL_TYPE}
    meta = {"instruction": "stack the cubes", "cameras": list(CAMERAS), "topics": LAYOUT,
            **(meta or {})}
    writer = bag.EpisodeWriter(path, types, meta)
    for topic, ns, msg in messages:
        writer.write(topic, ns + 5 * MS, rclpy_serialization.serialize_message(msg))
    writer.close(True)
    return path


def expected_state(t_ns):
    i = (t_ns - T0) // (10 * MS)  # latest joint state at or before t
    return np.array(joints(i), np.float32)


def test_convert_samples_on_the_grid(tmp_path):
    b = write_bag(tmp_path / "ep", synthetic_messages(1.0))
    meta = convert([b], tmp_path / "ds", rate=10, image_size=8)
    ep = meta["episodes"][0]
    # Grid spans 0 .. 0.966 s (last camera frame): steps at 0, 0.1, ..., 0.9.
    assert ep["grid_steps"] == 10 and ep["length"] == 10 and ep["instruction"] == "stack the cubes"
    data = np.load(tmp_path / "ds" / ep["file"])
    grid = T0 + np.arange(10) * 100 * MS
    np.testing.assert_allclose(data["timestamp"], np.arange(10) * 0.1)
    np.testing.assert_allclose(data["state"], [expected_state(t) for t in grid], atol=1e-6)
    # The next command after step t was sent 3 ms later, for joint state index i.
    np.testing.assert_allclose(data["action"], [-expected_state(t) for t in grid], atol=1e-6)
    assert meta["state_names"] == list(NAMES) and meta["cameras"] == ["base", "wrist"]

    stats = json.loads((tmp_path / "ds" / "norm_stats.json").read_text())
    np.testing.assert_allclose(stats["state"]["min"], data["state"].min(0), atol=1e-6)
    np.testing.assert_allclose(stats["action"]["max"], data["action"].max(0), atol=1e-6)
    np.testing.assert_allclose(stats["state"]["std"], data["state"].std(0), atol=1e-6)
    assert stats["count"] == 10


def test_intervention_flag_is_on_exactly_the_operators_steps(tmp_path):
    # Commands 30..59 (0.3 .. 0.59 s) were the operator's. Step k's action is command 10 k (3 ms
    # after the step): steps 3, 4 and 5 carry the operator's actions, and only those are flagged.
    b = write_bag(tmp_path / "ep", with_intervention(synthetic_messages(1.0), range(30, 60)))
    meta = convert([b], tmp_path / "ds", rate=10, image_size=8)
    data = np.load(tmp_path / "ds" / meta["episodes"][0]["file"])
    assert data["intervention"].tolist() == [k in (3, 4, 5) for k in range(10)]
    assert meta["episodes"][0]["intervention_steps"] == 3
    # observed actions are the next step's state: the flag in force at each step, shifted by one
    meta = convert([b], tmp_path / "observed", rate=10, image_size=8, action_source="observed")
    flags = np.load(tmp_path / "observed" / meta["episodes"][0]["file"])["intervention"]
    assert flags.tolist() == [k in (4, 5, 6) for k in range(9)]
    # a bag without the topic (no policy in the loop, or recorded before interventions): all false
    plain = convert([write_bag(tmp_path / "plain", synthetic_messages(1.0))], tmp_path / "plain_ds",
                    rate=10, image_size=8)
    assert not np.load(tmp_path / "plain_ds" / plain["episodes"][0]["file"])["intervention"].any()


def test_interrupted_episodes_are_skipped_unless_kept(tmp_path, capsys):
    good = write_bag(tmp_path / "good", synthetic_messages(0.5))
    cut = write_bag(tmp_path / "cut", synthetic_messages(0.5), meta={"instruction": "other"})
    meta_file = cut / "episode.json"
    why = "teleop device failed: Joy topic: no input for 512 ms"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "interrupted": why}))
    assert cli.main(["convert", str(good), str(cut), "--out", str(tmp_path / "a"), "--image-size", "8"]) == 0
    assert "skipped (interrupted: teleop device failed: Joy topic" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "a" / "meta.json").read_text())["episodes"]) == 1
    kept = convert([good, cut], tmp_path / "b", rate=10, image_size=8, keep_interrupted=True)
    assert [e["interrupted"] for e in kept["episodes"]] == [None, why]


def test_compressed_camera_topics_convert(tmp_path):
    # Cameras recorded as image_transport's <topic>/compressed: PNG for one view, JPEG for the other.
    from evo1_ros.data.images import encode_frame

    compressed = {name: topic + "/compressed" for name, topic in CAMERAS.items()}
    messages = []
    for topic, ns, msg in synthetic_messages(1.0):
        if msg.__class__ is Image:
            rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(12, 16, 3)
            rgb = rgb[..., ::-1] if msg.encoding == "bgr8" else rgb
            codec = "png" if topic == CAMERAS["base"] else "jpeg"
            msg = CompressedImage(header=msg.header, format=f"rgb8; {codec} compressed bgr8",
                                  data=encode_frame(rgb, codec).tobytes())
            topic = topic + "/compressed"
        messages.append((topic, ns, msg))
    types = {**{t: bag.COMPRESSED_IMAGE_TYPE for t in compressed.values()},
             topics.JOINT_STATES: bag.JOINT_STATE_TYPE, topics.TRAJECTORY: bag.TRAJECTORY_TYPE}
    b = write_bag(tmp_path / "ep", messages, meta={"topics": {**LAYOUT, "cameras": compressed}}, types=types)
    meta = convert([b], tmp_path / "ds", rate=10, image_size=16)
    raw = convert([write_bag(tmp_path / "raw", synthetic_messages(1.0))], tmp_path / "ds_raw", rate=10, image_size=16)
    got, want = (np.load(tmp_path / d / m["episodes"][0]["file"]) for d, m in (("ds", meta), ("ds_raw", raw)))
    np.testing.assert_array_equal(got["state"], want["state"])
    from evo1_ros.data.images import decode_frame

    for cam, tolerance in (("base", 0), ("wrist", 12)):  # PNG is lossless; JPEG within its error
        frames = [decode_frame(d[f"frames.{cam}"][d[f"offsets.{cam}"][0]:d[f"offsets.{cam}"][1]]) for d in (got, want)]
        assert np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= tolerance, cam


def test_observed_action_is_the_next_state(tmp_path):
    b = write_bag(tmp_path / "ep", synthetic_messages(1.0))
    meta = convert([b], tmp_path / "ds", rate=10, image_size=8, action_source="observed")
    data = np.load(tmp_path / "ds" / meta["episodes"][0]["file"])
    assert meta["episodes"][0]["length"] == 9  # the last step has no next state
    np.testing.assert_allclose(data["action"][:-1], data["state"][1:])


def test_stale_frames_drop_steps_and_are_counted(tmp_path):
    # No camera frames between 0.3 s and 0.7 s: steps 0.4 .. 0.7 find frames older than 0.1 s.
    b = write_bag(tmp_path / "ep", synthetic_messages(1.0, camera_gap=(300 * MS, 700 * MS)))
    meta = convert([b], tmp_path / "ds", rate=10, image_size=8)
    ep = meta["episodes"][0]
    assert ep["dropped"]["stale_base"] == ep["dropped"]["stale_wrist"] == 3
    assert ep["dropped"]["stale_joints"] == 0 and ep["length"] == 7
    data = np.load(tmp_path / "ds" / ep["file"])
    np.testing.assert_allclose(data["timestamp"], [0, 0.1, 0.2, 0.3, 0.7, 0.8, 0.9])


def test_dataset_items(tmp_path):
    torch = pytest.importorskip("torch")
    from evo1_ros.data.dataset import Evo1Dataset

    b = write_bag(tmp_path / "ep", synthetic_messages(1.0))
    convert([b], tmp_path / "ds", rate=10, image_size=8)
    ds = Evo1Dataset(tmp_path / "ds", horizon=4)
    assert len(ds) == 10
    item = ds[8]
    assert item["images"]["base"].shape == (3, 8, 8) and item["images"]["base"].dtype == torch.uint8
    # Frame at step 0.8 s is camera frame 24; base published RGB (24, 48, 231), wrist (124, ...).
    assert item["images"]["base"][:, 0, 0].tolist() == [24, 48, 231]
    assert item["images"]["wrist"][:, 0, 0].tolist() == [124, 248, 131]
    assert item["action_is_pad"].tolist() == [False, False, True, True]
    full = np.load(tmp_path / "ds" / "episode_000000.npz")["action"]
    np.testing.assert_allclose(item["action"].numpy(), full[[8, 9, 9, 9]])
    np.testing.assert_allclose(item["state"].numpy(), expected_state(T0 + 800 * MS), atol=1e-6)
    assert item["instruction"] == "stack the cubes" and item["frame_index"] == 8
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["images"]["wrist"].shape == (2, 3, 8, 8) and batch["action"].shape == (2, 4, 7)


def test_image_lag_pairs_a_state_with_older_frames(tmp_path):
    torch = pytest.importorskip("torch")
    from evo1_ros.data.dataset import Evo1Dataset

    b = write_bag(tmp_path / "ep", synthetic_messages(1.0))
    convert([b], tmp_path / "ds", rate=10, image_size=8)
    plain = Evo1Dataset(tmp_path / "ds", horizon=4)
    lagged = Evo1Dataset(tmp_path / "ds", horizon=4, max_image_lag=2)
    torch.manual_seed(0)
    # Step k shows camera frame 3k (red = 3k): with lag 0..2 steps, frames 3(k-2)..3k, all drawn.
    seen = {int(lagged[8]["images"]["base"][0, 0, 0]) for _ in range(60)}
    assert seen == {18, 21, 24}
    np.testing.assert_array_equal(lagged[8]["state"].numpy(), plain[8]["state"].numpy())
    np.testing.assert_array_equal(lagged[8]["action"].numpy(), plain[8]["action"].numpy())
    assert {int(lagged[0]["images"]["base"][0, 0, 0]) for _ in range(20)} == {0}  # clamped at the start
    with pytest.raises(ValueError, match="max_image_lag"):
        Evo1Dataset(tmp_path / "ds", horizon=4, max_image_lag=-1)


def test_failed_episodes_are_skipped_unless_kept(tmp_path):
    good = write_bag(tmp_path / "good", synthetic_messages(0.5))
    bad = write_bag(tmp_path / "bad", synthetic_messages(0.5), meta={"instruction": "other"})
    meta_file = bad / "episode.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "success": False}))
    assert len(convert([good, bad], tmp_path / "a", rate=10, image_size=8)["episodes"]) == 1
    kept = convert([good, bad], tmp_path / "b", rate=10, image_size=8, keep_failed=True)
    assert [e["instruction"] for e in kept["episodes"]] == ["stack the cubes", "other"]


def test_empty_bag_fails_clearly(tmp_path):
    b = write_bag(tmp_path / "empty", [])
    with pytest.raises(ConversionError, match=f"{b}: bag is empty"):
        convert([b], tmp_path / "ds")


def test_missing_camera_topic_fails_clearly(tmp_path):
    messages = [m for m in synthetic_messages(0.5) if m[0] != CAMERAS["wrist"]]
    b = write_bag(tmp_path / "ep", messages)
    with pytest.raises(ConversionError, match=f"{b}: no messages on topic {CAMERAS['wrist']}"):
        convert([b], tmp_path / "ds")


def test_reversed_stamps_fail_clearly(tmp_path):
    messages = synthetic_messages(0.5)
    js = [k for k, m in enumerate(messages) if m[0] == topics.JOINT_STATES]
    # Arrival (log time) order kept, header stamps of messages 10 and 11 swapped.
    (topic, a, msg_a), (_, b, msg_b) = messages[js[10]], messages[js[11]]
    messages[js[10]], messages[js[11]] = (topic, a, msg_b), (topic, b, msg_a)
    b = write_bag(tmp_path / "ep", messages)
    with pytest.raises(ConversionError,
                       match=f"{b}: stamps on topic /joint_states go backwards at message 11"):
        convert([b], tmp_path / "ds")


def test_cli_reports_errors_and_converts(tmp_path, capsys):
    empty = write_bag(tmp_path / "empty", [])
    assert cli.main(["convert", str(empty), "--out", str(tmp_path / "x")]) == 1
    assert f"{empty}: bag is empty" in capsys.readouterr().err

    b = write_bag(tmp_path / "ep", synthetic_messages(0.5))
    argv = ["convert", str(b), "--out", str(tmp_path / "ds"), "--rate", "20", "--image-size",
            "8", "--cameras", "wrist", "--codec", "jpg"]
    assert cli.main(argv) == 0
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["cameras"] == ["wrist"] and meta["fps"] == 20 and meta["codec"] == "jpg"
    assert cli.main(argv) == 1  # refuses to overwrite a dataset
    assert "already holds a dataset" in capsys.readouterr().err


LEROBOT_PYTHON = os.environ.get("EVO1_LEROBOT_PYTHON") or str(Path(__file__).parents[1] / ".venv-lerobot/bin/python")
READ_BACK = """
import json, sys
import numpy as np
from ledataset.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/lr", root=sys.argv[1])
items = [ds[i] for i in range(len(ds))]
np.savez(sys.argv[2], frames=len(ds), episodes=ds.num_episodes, fps=ds.fps,
         state=np.stack([x["observation.state"].numpy() for x in items]),
         action=np.stack([x["action"].numpy() for x in items]),
         episode=np.array([int(x["episode_index"]) for x in items]),
         task=np.array([x["task"] for x in items]),
         intervention=np.array([bool(x["intervention"]) for x in items]),
         **{cam: np.stack([(x[f"observation.images.{cam}"].numpy() * 255).round().astype(np.uint8)
                           for x in items]) for cam in ("base", "wrist")})
"""


@pytest.mark.skipif(not Path(LEROBOT_PYTHON).is_file(), reason="no LeRobot venv: bash scripts/setup_lerobot.sh")
def test_lerobot_export_reads_back_with_lerobot_dataset(tmp_path):
    from evo1_ros.data.dataset import Evo1Dataset

    bags = [write_bag(tmp_path / "a", with_intervention(synthetic_messages(1.0), range(30, 60))),
            write_bag(tmp_path / "b", synthetic_messages(0.5), meta={"instruction": "other"})]
    out = tmp_path / "lr"
    argv = ["convert", *map(str, bags), "--out", str(out), "--format", "lerobot", "--rate", "10",
            "--image-size", "8", "--repo-id", "local/lr", "--lerobot-python", LEROBOT_PYTHON]
    assert cli.main(argv) == 0
    assert (out / "meta" / "info.json").is_file() and not list(tmp_path.glob(".evo1-*"))  # staging removed
    assert cli.main(argv) == 1  # refuses to overwrite

    subprocess.run([LEROBOT_PYTHON, "-c", READ_BACK, str(out), str(tmp_path / "back.npz")], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    back = np.load(tmp_path / "back.npz")
    convert(bags, tmp_path / "evo1", rate=10, image_size=8)
    source = Evo1Dataset(tmp_path / "evo1", horizon=1)
    items = [source[i] for i in range(len(source))]
    assert int(back["frames"]) == len(source) == 15 and int(back["episodes"]) == 2 and int(back["fps"]) == 10
    np.testing.assert_array_equal(back["state"], np.stack([x["state"].numpy() for x in items]))
    np.testing.assert_array_equal(back["action"], np.stack([x["action"][0].numpy() for x in items]))
    assert back["episode"].tolist() == [x["episode_index"] for x in items]
    assert back["task"].tolist() == [x["instruction"] for x in items]
    assert back["intervention"].tolist() == [k in (3, 4, 5) for k in range(10)] + [False] * 5
    for cam in ("base", "wrist"):  # PNG frames: bit-exact
        np.testing.assert_array_equal(back[cam], np.stack([x["images"][cam].numpy() for x in items]))


def test_lerobot_export_without_its_venv_fails_clearly(tmp_path, capsys):
    b = write_bag(tmp_path / "ep", synthetic_messages(0.5))
    argv = ["convert", str(b), "--out", str(tmp_path / "lr"), "--format", "lerobot",
            "--lerobot-python", str(tmp_path / "missing" / "python")]
    assert cli.main(argv) == 1
    assert "no LeRobot environment" in capsys.readouterr().err and not (tmp_path / "lr").exists()
