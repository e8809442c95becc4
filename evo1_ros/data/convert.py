"""`evo1-ros convert`: episode bags -> a training dataset and its normalisation stats.

Cameras may be recorded raw (`sensor_msgs/Image`) or compressed (`sensor_msgs/CompressedImage`,
JPEG/PNG, the recorder's `image_transport: compressed`); `evo1_ros.data.images` decodes both.

Synchronisation. Every message gets a time: its header stamp, or the recorder's log time when the
stamp is zero. Cameras and joint states are sampled on one grid at `--rate` Hz spanning the time all
of them have data; at each step each stream contributes its latest sample, which must be at most
`--max-age` old, else the step is dropped and counted under that stream. state = joints + gripper
(`drive_joint`); action = the first command (`JointTrajectory`, first point) after the step, at most
`--max-age` later (`--action command`), or the next step's state (`--action observed`).

Interventions. An episode recorded while an operator could take over from a policy holds the
teleop node's `/evo1/intervention` (std_msgs/Bool, every control period: whether the operator has
the arm). A step's `intervention` flag is the value in force when its action was commanded (the
latest flag the recorder got before that command; with `--action observed`, before the step), so
it is true on exactly the steps whose action is the operator's. Without the topic, all false.
Episodes marked interrupted (a teleop device failed) are skipped unless `--keep-interrupted`.

`evo1` format (`--out DIR`):

    meta.json           format, version, fps, cameras, image_size, codec, state_names,
                        action_names, action_source, max_age_s; per episode: file, bag,
                        instruction, task, operator, teleop_source, success, interrupted,
                        length, intervention_steps, grid_steps, dropped (steps by cause)
    norm_stats.json     {"state"|"action": {"min", "max", "mean", "std": [dim]}, "count": steps}
    episode_NNNNNN.npz  state (T, 7) float32, action (T, 7) float32, timestamp (T,) float64
                        seconds since the first kept step, intervention (T,) bool, and per
                        camera `frames.<cam>`: the
                        T encoded frames (PNG or JPEG, RGB, image_size x image_size) concatenated
                        as uint8, sliced by `offsets.<cam>` (T + 1,) int64.

Frames stay encoded on disk and in the training process's memory (PNG is lossless; a dataset is
~5-20x smaller than raw frames) and are decoded per sample; `evo1_ros.data.dataset` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from evo1_ros.data import images
from evo1_ros.robot import topics
from evo1_ros.robot.xarm6 import JOINT_STATE_NAMES

FORMAT_VERSION = 1


class ConversionError(RuntimeError):
    pass


def pick(names, values, where: str) -> np.ndarray:
    """Values of JOINT_STATE_NAMES out of a (names, values) pair of a JointState or trajectory point."""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in JOINT_STATE_NAMES if n not in index]
    if missing or len(values) < len(names):
        raise ConversionError(f"{where}: message lacks positions for {missing or list(names)}")
    return np.array([values[index[n]] for n in JOINT_STATE_NAMES], np.float64)


def topic_layout(bag_path: Path, meta: dict, cameras: list[str] | None) -> dict:
    """{"cameras": {name: topic}, "joint_states": topic, "command": topic, "intervention": topic or
    None (bags from before interventions)} of one bag."""
    recorded = meta.get("topics", {})
    available = recorded.get("cameras") or {name: topics.camera_topic(name) for name in cameras or []}
    chosen = cameras or list(available)
    if not chosen:
        raise ConversionError(f"{bag_path}: no cameras recorded in episode.json; pass --cameras")
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ConversionError(f"{bag_path}: cameras {unknown} not recorded "
                              f"(have {list(available)})")
    return {
        "cameras": {name: available[name] for name in chosen},
        "joint_states": recorded.get("joint_states", topics.JOINT_STATES),
        "command": recorded.get("command", topics.TRAJECTORY),
        "intervention": recorded.get("intervention"),
    }


def read_streams(bag_path: Path, layout: dict, image_size: int, need_command: bool) -> dict:
    """Per topic (stamps int64 ns, values, log times int64 ns): resized RGB frames, joint or
    command vectors, intervention flags (stamped with their log time: Bool has no header). Every
    topic but the intervention's must have messages."""
    import cv2

    from evo1_ros.data import bag

    cameras = {topic: name for name, topic in layout["cameras"].items()}
    required = {*cameras, layout["joint_states"]} | ({layout["command"]} if need_command else set())
    wanted = required | ({layout["intervention"]} if layout["intervention"] else set())
    streams: dict[str, tuple[list, list, list]] = {topic: ([], [], []) for topic in wanted}
    total = 0
    for m in bag.read_messages(bag_path):
        total += 1
        if m.topic not in wanted:
            continue
        where = f"{bag_path}: {m.topic}"
        msg = bag.decode(m.msgtype, m.raw)
        if m.topic == layout["intervention"]:
            streams[m.topic][0].append(m.log_ns)
            streams[m.topic][1].append(bool(msg.data))
            streams[m.topic][2].append(m.log_ns)
            continue
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec or m.log_ns
        if m.topic in cameras:
            try:
                rgb = images.to_rgb(msg)  # sensor_msgs/Image or CompressedImage
            except images.ImageError as exc:
                raise ConversionError(f"{where}: {exc}") from exc
            value = cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA)
        elif m.topic == layout["joint_states"]:
            value = pick(msg.name, msg.position, where)
        elif msg.points:
            value = pick(msg.joint_names, msg.points[0].positions, where)
        else:
            continue  # a trajectory without points cancels motion; it commands no target
        streams[m.topic][0].append(stamp)
        streams[m.topic][1].append(value)
        streams[m.topic][2].append(m.log_ns)
    if total == 0:
        raise ConversionError(f"{bag_path}: bag is empty")
    result = {}
    for topic, (stamps, values, logged) in streams.items():
        if not stamps:
            if topic in required:
                raise ConversionError(f"{bag_path}: no messages on topic {topic}")
            continue
        stamps = np.array(stamps, np.int64)
        back = np.flatnonzero(np.diff(stamps) < 0)
        if back.size:
            i = back[0]
            raise ConversionError(f"{bag_path}: stamps on topic {topic} go backwards at message "
                                  f"{i + 1} ({stamps[i]} -> {stamps[i + 1]} ns)")
        result[topic] = (stamps, values, np.array(logged, np.int64))
    return result


def sync_episode(bag_path: Path, streams: dict, layout: dict, rate: float, max_age: float,
                 action_source: str) -> dict:
    """Sample the streams on the grid; returns arrays of kept steps + drop counts."""
    max_age_ns = round(max_age * 1e9)
    observed = {name: topic for name, topic in layout["cameras"].items()}
    observed["joints"] = layout["joint_states"]
    t0 = max(streams[t][0][0] for t in observed.values())
    t1 = min(streams[t][0][-1] for t in observed.values())
    if t1 < t0:
        raise ConversionError(f"{bag_path}: camera and joint streams do not overlap in time")
    grid = np.arange(t0, t1 + 1, round(1e9 / rate), dtype=np.int64)
    latest, fresh = {}, {}
    for name, topic in observed.items():
        stamps = streams[topic][0]
        latest[name] = np.searchsorted(stamps, grid, side="right") - 1  # >= 0 since grid >= t0
        fresh[name] = grid - stamps[latest[name]] <= max_age_ns
    joints = np.stack(streams[layout["joint_states"]][1])
    state = joints[latest["joints"]]
    if action_source == "command":
        stamps, commands, logged = streams[layout["command"]]
        nxt = np.searchsorted(stamps, grid, side="right")
        has_action = nxt < len(stamps)
        nxt = np.minimum(nxt, len(stamps) - 1)
        has_action &= stamps[nxt] - grid <= max_age_ns
        action = np.stack(commands)[nxt]
        commanded = logged[nxt]  # on the recorder's clock, as the intervention flags are
    else:
        has_action = np.append(fresh["joints"][1:], False)
        action = np.concatenate([state[1:], state[-1:]])
        commanded = grid
    intervention = np.zeros(len(grid), bool)
    if layout["intervention"] in streams:
        flag_times, flags, _ = streams[layout["intervention"]]
        latest_flag = np.searchsorted(flag_times, commanded, side="right") - 1
        intervention = (latest_flag >= 0) & np.array(flags, bool)[np.maximum(latest_flag, 0)]
    keep = has_action.copy()
    for ok in fresh.values():
        keep &= ok
    dropped = {f"stale_{name}": int((~ok).sum()) for name, ok in fresh.items()}
    dropped["no_action"] = int((~has_action).sum())
    if not keep.any():
        raise ConversionError(f"{bag_path}: no grid step has fresh data on every topic "
                              f"({len(grid)} steps; dropped {dropped})")
    frames = {name: [streams[topic][1][i] for i in latest[name][keep]]
              for name, topic in layout["cameras"].items()}
    return {
        "state": state[keep].astype(np.float32),
        "action": action[keep].astype(np.float32),
        "timestamp": (grid[keep] - grid[keep][0]) / 1e9,
        "intervention": intervention[keep],
        "frames": frames,
        "grid_steps": len(grid),
        "dropped": dropped,
    }


def write_episode(file: Path, episode: dict, codec: str) -> None:
    arrays = {k: episode[k] for k in ("state", "action", "timestamp", "intervention")}
    for name, frames in episode["frames"].items():
        encoded = [images.encode_frame(f, codec) for f in frames]
        arrays[f"frames.{name}"] = np.concatenate(encoded)
        arrays[f"offsets.{name}"] = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
    np.savez(file, **arrays)


def norm_stats(arrays: list[np.ndarray]) -> dict:
    x = np.concatenate(arrays).astype(np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(),
            "mean": x.mean(0).tolist(), "std": x.std(0).tolist()}


def convert(bags: list[Path], out: Path, rate: float = 15.0, max_age: float = 0.1,
            image_size: int = 224, codec: str = "png", action_source: str = "command",
            cameras: list[str] | None = None, instruction: str | None = None,
            keep_failed: bool = False, keep_interrupted: bool = False, log=print) -> dict:
    """Convert episode bags into an `evo1` dataset under `out`; returns meta.json's content."""
    from evo1_ros.data import bag

    if (out / "meta.json").exists():
        raise ConversionError(f"{out} already holds a dataset")
    out.mkdir(parents=True, exist_ok=True)
    episodes, states, actions, camera_names = [], [], [], None
    for bag_path in bags:
        meta = bag.read_meta(bag_path)
        if meta.get("success") is False and not keep_failed:
            log(f"{bag_path}: skipped (episode marked failed; --keep-failed keeps it)")
            continue
        if meta.get("interrupted") and not keep_interrupted:
            log(f"{bag_path}: skipped (interrupted: {meta['interrupted']}; --keep-interrupted keeps it)")
            continue
        text = instruction or meta.get("instruction")
        if not text:
            raise ConversionError(f"{bag_path}: no instruction in episode.json; pass --instruction")
        layout = topic_layout(bag_path, meta, cameras)
        if camera_names not in (None, list(layout["cameras"])):
            raise ConversionError(f"{bag_path}: cameras {list(layout['cameras'])} differ from "
                                  f"the earlier bags' {camera_names}; pass --cameras")
        camera_names = list(layout["cameras"])
        streams = read_streams(bag_path, layout, image_size, action_source == "command")
        episode = sync_episode(bag_path, streams, layout, rate, max_age, action_source)
        file = f"episode_{len(episodes):06d}.npz"
        write_episode(out / file, episode, codec)
        states.append(episode["state"])
        actions.append(episode["action"])
        intervened = int(episode["intervention"].sum())
        episodes.append({
            "file": file, "bag": str(bag_path), "instruction": text, "task": meta.get("task"),
            "operator": meta.get("operator"), "teleop_source": meta.get("teleop_source"),
            "success": meta.get("success"), "interrupted": meta.get("interrupted"),
            "length": len(episode["state"]), "intervention_steps": intervened,
            "grid_steps": episode["grid_steps"], "dropped": episode["dropped"],
        })
        log(f"{bag_path}: {len(episode['state'])} of {episode['grid_steps']} steps kept "
            f"(dropped {episode['dropped']}; {intervened} by an operator's intervention)")
    if not episodes:
        raise ConversionError("no episodes to convert")
    meta = {
        "format": "evo1", "version": FORMAT_VERSION, "fps": rate, "cameras": camera_names,
        "image_size": [image_size, image_size], "codec": codec, "state_names": list(JOINT_STATE_NAMES),
        "action_names": list(JOINT_STATE_NAMES), "action_source": action_source, "max_age_s": max_age,
        "episodes": episodes,
    }
    stats = {"state": norm_stats(states), "action": norm_stats(actions),
             "count": int(sum(len(s) for s in states))}
    (out / "norm_stats.json").write_text(json.dumps(stats, indent=2))
    (out / "meta.json").write_text(json.dumps(meta, indent=2))  # last: marks the dataset complete
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", type=Path, metavar="BAG", help="episode bag directories")
    parser.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    parser.add_argument("--format", choices=["evo1", "lerobot"], default="evo1",
                        help="evo1 (ours, for evo1-ros train) or lerobot (a LeRobot v3 dataset, written by "
                             "LeRobot's library in its own venv: scripts/setup_lerobot.sh)")
    parser.add_argument("--rate", type=float, default=15.0, help="grid rate in Hz (default 15)")
    parser.add_argument("--max-age", type=float, default=0.1,
                        help="oldest sample (s) a grid step may use; older ones drop the step")
    parser.add_argument("--image-size", type=int, default=224, help="square training resolution")
    parser.add_argument("--codec", choices=["png", "jpg"], default="png",
                        help="frame encoding: png (lossless) or jpg (smaller)")
    parser.add_argument("--action", choices=["command", "observed"], default="command",
                        help="action = next commanded joints (default) or next observed state")
    parser.add_argument("--cameras", nargs="+", help="camera names to use (default: all recorded)")
    parser.add_argument("--instruction", help="instruction for bags without episode.json")
    parser.add_argument("--keep-failed", action="store_true", help="also convert failed episodes")
    parser.add_argument("--keep-interrupted", action="store_true",
                        help="also convert episodes cut short by a teleop device failure")
    lerobot = parser.add_argument_group("--format lerobot")
    lerobot.add_argument("--repo-id", help="the dataset's LeRobot repo id (default local/<out name>)")
    lerobot.add_argument("--video", action="store_true",
                         help="store cameras as mp4 video (lossy, small) instead of PNG images")
    lerobot.add_argument("--lerobot-python", metavar="PYTHON",
                         help="interpreter with lerobot-dataset (default $EVO1_LEROBOT_PYTHON or "
                              ".venv-lerobot/bin/python)")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from evo1_ros.data import lerobot_export
    from evo1_ros.data.bag import BagError

    options = dict(rate=args.rate, max_age=args.max_age, image_size=args.image_size, codec=args.codec,
                   action_source=args.action, cameras=args.cameras, instruction=args.instruction,
                   keep_failed=args.keep_failed, keep_interrupted=args.keep_interrupted)
    try:
        if args.format == "evo1":
            convert(args.bags, args.out, **options)
        else:
            python = lerobot_export.lerobot_python(args.lerobot_python)  # fail before the long part
            if args.out.exists():
                raise ConversionError(f"{args.out} already exists")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            # Synchronise once, in our format (PNG is lossless), then hand it to LeRobot's writer.
            with tempfile.TemporaryDirectory(prefix=".evo1-", dir=args.out.parent) as staging:
                convert(args.bags, Path(staging), **{**options, "codec": "png"})
                print("writing the LeRobot dataset ...", flush=True)
                summary = lerobot_export.run_export(Path(staging), args.out, args.repo_id or f"local/{args.out.name}",
                                                    args.video, python)
            print(f"LeRobot v3 dataset: {summary['episodes']} episodes, {summary['frames']} frames "
                  f"at {summary['fps']} fps, read back and checked")
    except (ConversionError, BagError, lerobot_export.ExportError) as exc:
        print(f"evo1-ros convert: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
