"""`evo1-ros check CHECKPOINT`: a preflight before a checkpoint meets the arm.

Loads the checkpoint, prints how it sees the robot (conventions, views, rate, chunk execution,
normalisation), runs one chunk on an observation — the first complete one of an episode bag
(`--bag`), or synthetic grey views at a given arm state (`--robot-state`, radians + drive_joint;
default the sim's home pose, gripper open) — and reports the first action's distance from the
state, each joint's predicted range against the arm's limits, and the latency. Exit code 1, with a
sentence saying what is off, when the state lies far outside what the checkpoint was trained on
(units declared wrong, e.g. radians fed to a degree checkpoint), the first action is far from the
state, or the prediction leaves the arm's limits; 0 otherwise.

`--migrate` moves an older checkpoint's deployment settings out of config.json into
deployment.json (runtime/deployment.py) and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..robot import xarm6

FIRST_ACTION_TOLERANCE = 0.35  # rad; the inference node's first_action_tolerance_rad default
OUTSIDE_RANGE = 1.0  # a state this far past its training range (in range widths) is not in the same units


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="evo1_ros checkpoint directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bag", help="episode bag: the first frame set and joint state in it are the observation")
    source.add_argument("--robot-state", metavar="q1,...,q6,g",
                        help="arm state for a synthetic observation: 6 joints (rad) and the gripper (drive_joint, "
                             "0 open .. 0.85 closed); default: home, gripper open")
    parser.add_argument("--instruction", help="default: the checkpoint's first trained instruction")
    parser.add_argument("--tolerance", type=float, default=FIRST_ACTION_TOLERANCE,
                        help="largest first-action distance from the state on any joint, rad (default %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--migrate", action="store_true",
                        help="move deployment settings an older checkpoint keeps in config.json to deployment.json")


class CheckError(ValueError):
    pass


def parse_state(text: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.replace(" ", "").split(",")])
    except ValueError as e:
        raise CheckError(f"--robot-state {text!r}: expected 7 comma-separated numbers ({e})") from e
    if values.shape != (xarm6.NUM_JOINTS + 1,) or not np.isfinite(values).all():
        raise CheckError(f"--robot-state {text!r}: expected 7 finite numbers (6 joints in rad, gripper drive_joint)")
    return values


def bag_observation(path: str, views: list[str]) -> tuple[list[np.ndarray], np.ndarray, str]:
    """(frames in view order, state in ROS units, instruction) of the first moment a bag has a frame
    of every camera and a joint state."""
    from ..data import bag, images
    from ..data.convert import ConversionError, pick, topic_layout

    meta = bag.read_meta(path)
    try:
        layout = topic_layout(Path(path), meta, views or None)
    except ConversionError as e:
        raise CheckError(str(e)) from e
    cameras = {topic: name for name, topic in layout["cameras"].items()}
    frames: dict[str, np.ndarray] = {}
    for m in bag.read_messages(path, {*cameras, layout["joint_states"]}):
        msg = bag.decode(m.msgtype, m.raw)
        if m.topic in cameras:
            frames[cameras[m.topic]] = images.to_rgb(msg)
        elif len(frames) == len(cameras):
            state = pick(msg.name, msg.position, f"{path}: {m.topic}")
            return [frames[name] for name in layout["cameras"]], state, meta.get("instruction", "")
    raise CheckError(f"{path}: no moment with a frame of every camera {list(layout['cameras'])} and a joint state")


def describe_normalisation(normalizer) -> list[str]:
    lines = []
    for key in ("observation.state", "action"):
        stats = normalizer.stats[key]
        mode = normalizer.mode_of(key)
        if "min" in stats and "max" in stats:
            ranges = ", ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(stats["min"], stats["max"]))
            lines.append(f"  {key}: {mode}, ranges {ranges}")
        else:
            lines.append(f"  {key}: {mode}")
    return lines


def problems_with(policy, state: np.ndarray, chunk: np.ndarray, tolerance: float) -> list[str]:
    """Sentences for what is off, most telling first."""
    problems = []
    stats = policy.processor.normalizer.stats["observation.state"]
    if "min" in stats and "max" in stats:
        seen = policy.conventions.state_to_policy(state)
        lo, hi = np.asarray(stats["min"]), np.asarray(stats["max"])
        # Range widths per dim, floored at the widest dim of the same meaning: a joint the demos hardly
        # moved is not evidence of wrong units when the arm stands elsewhere; a factor 57 or 1000 is.
        meanings = np.array([d.meaning for d in policy.conventions.state])
        width = np.array([max((hi - lo)[meanings == m].max(), 1e-6) for m in meanings])
        past = np.maximum(lo - seen, seen - hi) / width
        worst = int(np.argmax(past))
        if past[worst] > OUTSIDE_RANGE:
            dim = policy.conventions.state[worst]
            problems.append(
                f"the state's dim {worst} is {seen[worst]:.4g} {dim.unit} to the checkpoint, {past[worst]:.1f} range "
                f"widths outside the [{lo[worst]:.4g}, {hi[worst]:.4g}] it was trained on: its declared units "
                f"({policy.conventions.describe()}) are probably not the ones it was trained in")
    joints = chunk[:, : xarm6.NUM_JOINTS]
    gap = np.abs(joints[0] - state[: xarm6.NUM_JOINTS])
    worst = int(np.argmax(gap))
    if gap[worst] > tolerance:
        problems.append(f"the first action is {gap[worst]:.2f} rad from the state on {xarm6.JOINT_NAMES[worst]} "
                        f"(tolerance {tolerance:.2f}): the arm would leap; check the declared units")
    outside = [name for j, name in enumerate(xarm6.JOINT_NAMES)
               if joints[:, j].min() < xarm6.JOINT_LOWER[j] or joints[:, j].max() > xarm6.JOINT_UPPER[j]]
    if outside:
        problems.append(f"the chunk leaves the arm's joint limits on {outside}")
    return problems


def run(args) -> int:
    from ..model.checkpoint import CheckpointError
    from .deployment import DeploymentError, load_deployment, migrate

    try:
        if args.migrate:
            settings = migrate(args.checkpoint)
            print(f"{args.checkpoint}: deployment settings moved to deployment.json: {settings.to_dict()}")
            return 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_deployment(args.checkpoint)
        for w in caught:
            print(f"note: {w.message}")
        return check(args)
    except (CheckError, CheckpointError, DeploymentError, OSError, ValueError) as e:
        print(f"evo1-ros check: error: {e}", file=sys.stderr)
        return 1


def check(args) -> int:
    from .policy import Evo1ChunkPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported above
        policy = Evo1ChunkPolicy.from_checkpoint(args.checkpoint, device=args.device)
    settings, conventions = policy.deployment, policy.conventions
    print(f"checkpoint {args.checkpoint}")
    print(f"  conventions: {conventions.describe()}")
    print(f"  action rate: {settings.action_rate_hz or 'unknown'} Hz; chunks of {policy.chunk_length}, "
          f"mode {settings.chunk_mode or 'node default'}, request threshold "
          f"{'node default' if settings.request_threshold is None else settings.request_threshold}, "
          f"noise scale {settings.noise_scale}")
    print(f"  trained instructions: {settings.instructions or 'not recorded'}")
    print("  normalisation:")
    print("\n".join(describe_normalisation(policy.processor.normalizer)))

    views = list(conventions.views)
    if args.bag:
        frames, state, bag_instruction = bag_observation(args.bag, views)
        source = f"bag {args.bag}"
    else:
        state = parse_state(args.robot_state) if args.robot_state else np.append(xarm6.HOME, xarm6.GRIPPER_OPEN)
        frames = [np.full((224, 224, 3), 128, np.uint8) for _ in range(max(1, len(views) or 2))]
        bag_instruction, source = "", "synthetic grey views"
    instruction = args.instruction or bag_instruction or (settings.instructions or ["pick up the object"])[0]
    problem = policy.instruction_problem(instruction)
    if problem:
        raise CheckError(f"instruction {instruction!r}: {problem}")
    print(f"observation: {source}, state {np.round(state, 4).tolist()}, instruction {instruction!r}")

    latencies = []
    for _ in range(2):  # the first pays warm-up; the second is the steady latency
        start = time.perf_counter()
        chunk = policy.predict_chunk(frames, state, instruction)
        latencies.append(time.perf_counter() - start)
    gap = np.abs(chunk[0, : xarm6.NUM_JOINTS] - state[: xarm6.NUM_JOINTS])
    print(f"first action: {np.round(chunk[0], 4).tolist()}; distance from the state per joint (rad) "
          f"{np.round(gap, 3).tolist()}")
    print("predicted range per joint (rad) against the arm's limits:")
    for j, name in enumerate(xarm6.JOINT_NAMES):
        lo, hi = chunk[:, j].min(), chunk[:, j].max()
        inside = xarm6.JOINT_LOWER[j] <= lo and hi <= xarm6.JOINT_UPPER[j]
        print(f"  {name}: [{lo:+.3f}, {hi:+.3f}] in [{xarm6.JOINT_LOWER[j]:+.3f}, {xarm6.JOINT_UPPER[j]:+.3f}]"
              f"{'' if inside else '  OUTSIDE'}")
    if chunk.shape[1] > xarm6.NUM_JOINTS:
        print(f"  gripper (drive_joint): [{chunk[:, 6].min():+.3f}, {chunk[:, 6].max():+.3f}] "
              f"in [{xarm6.GRIPPER_OPEN}, {xarm6.GRIPPER_CLOSED}]")
    print(f"latency: {1000 * latencies[0]:.0f} ms first chunk, {1000 * latencies[1]:.0f} ms next ({args.device})")

    problems = problems_with(policy, state, chunk, args.tolerance)
    if problems:
        print(f"evo1-ros check: {problems[0]}", file=sys.stderr)
        for more in problems[1:]:
            print(f"  also: {more}", file=sys.stderr)
        return 1
    print("ok: the checkpoint's conventions agree with the state, and its first chunk stays near the arm "
          "and inside its limits")
    return 0
