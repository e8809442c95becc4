r"""`evo1-ros leader-calibrate`: record a Dynamixel leader arm's joint offsets and gripper range.

Put the leader in a known pose of the follower's joints (`--pose`, radians; all zeros by default,
the xArm6 standing straight up) with its gripper open and press Enter; then squeeze the gripper
shut and press Enter. The offsets that make that pose read as `--pose`, and the gripper's raw
open/closed positions, go to `--out` (YAML, `LeaderConfig`), read back once as a check.

    evo1-ros leader-calibrate --port /dev/serial/by-id/usb-FTDI_...-if00-port0 \
        --signs 1,-1,1,1,1,1 --out config/leader.yaml
    evo1-ros leader-calibrate --config config/leader.yaml   # recalibrate with that file's bus and signs

Signs (+1 or -1 per joint: does the servo turn the follower's way?) are the builder's to give;
calibration cannot tell them from one pose.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from evo1_ros.robot.xarm6 import HOME, NUM_JOINTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="start from this leader YAML (port, baud rate, ids, signs); "
                        "flags override it; --out defaults to it")
    parser.add_argument("--port", help="serial device of the leader's U2D2 / USB adapter")
    parser.add_argument("--baud", type=int, help="bus baud rate (default 57600)")
    parser.add_argument("--ids", help="the six joint servos' ids, comma-separated (default 1,2,3,4,5,6)")
    parser.add_argument("--signs", help="six 1/-1, comma-separated (default all 1)")
    parser.add_argument("--gripper-id", type=int, help="gripper servo id (default 7)")
    parser.add_argument("--no-gripper", action="store_true", help="the leader has no gripper servo")
    parser.add_argument("--pose", default="zero",
                        help="the follower joint angles (rad) the leader is held in: 'zero', 'home' or six numbers")
    parser.add_argument("--out", help="YAML file to write")


def run(args: argparse.Namespace) -> int:
    from evo1_ros.teleop.device import DeviceError
    from evo1_ros.teleop.dynamixel import DynamixelLeader
    from evo1_ros.teleop.leader import LeaderConfig, calibration_offsets

    try:
        settings, pose = _settings(args, LeaderConfig), _pose(args.pose)
        out = args.out or args.config
        if not out:
            raise ValueError("give --out (or --config to rewrite that file)")
        gripper_id = settings["gripper_id"]
        ids = tuple(settings["joint_ids"]) + ((gripper_id,) if gripper_id is not None else ())
    except (ValueError, TypeError) as error:
        print(f"leader-calibrate: {error}", file=sys.stderr)
        return 2
    try:
        with DynamixelLeader(settings["port"], settings["baudrate"], ids) as bus:
            input(f"Hold the leader in the pose {np.round(pose, 3).tolist()} (rad) with its gripper open, "
                  "then press Enter: ")
            posed = bus.read_positions()
            if gripper_id is not None:
                input("Squeeze the leader's gripper shut, then press Enter: ")
                settings["gripper_open"] = int(posed[NUM_JOINTS])
                settings["gripper_closed"] = int(bus.read_positions()[NUM_JOINTS])
        settings["joint_offsets"] = calibration_offsets(posed[:NUM_JOINTS], settings["joint_signs"], pose)
        calibrated = LeaderConfig.from_dict(settings)
        calibrated.save(out)
        check = LeaderConfig.load(out).reading(posed)
    except (DeviceError, ValueError) as error:
        print(f"leader-calibrate: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"leader-calibrate: cannot write {out}: {error.strerror or error}", file=sys.stderr)
        return 1
    error = np.abs(check.joints - pose).max()
    gripper = (f", gripper raw {calibrated.gripper_open} open .. {calibrated.gripper_closed} closed"
               if gripper_id is not None else "")
    print(f"wrote {out}: offsets {np.round(calibrated.joint_offsets, 4).tolist()} rad{gripper}; "
          f"the pose reads back within {error:.1e} rad")
    return 0


def _settings(args, leader_config) -> dict:
    """LeaderConfig settings: the defaults, then --config's file, then the flags given."""
    defaults = {f.name: f.default for f in dataclasses.fields(leader_config) if f.default is not dataclasses.MISSING}
    base = leader_config.load(args.config).to_dict() if args.config else {}
    flags = {"port": args.port, "baudrate": args.baud, "joint_ids": _ints(args.ids, "--ids"),
             "joint_signs": _ints(args.signs, "--signs"), "gripper_id": args.gripper_id}
    settings = {**defaults, **base, **{k: v for k, v in flags.items() if v is not None}}
    if args.no_gripper:
        settings["gripper_id"] = None
    if not settings.get("port"):
        raise ValueError("give --port (or --config with a port)")
    # Check the bus settings before touching the bus (the gripper's range is what we are about to record).
    leader_config.from_dict({**settings, "gripper_open": 0, "gripper_closed": 1})
    return settings


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _pose(text: str) -> np.ndarray:
    if text == "zero":
        return np.zeros(NUM_JOINTS)
    if text == "home":
        return HOME.copy()
    try:
        pose = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ValueError(f"--pose must be 'zero', 'home' or {NUM_JOINTS} comma-separated numbers, "
                         f"got {text!r}") from None
    if pose.shape != (NUM_JOINTS,) or not np.isfinite(pose).all():
        raise ValueError(f"--pose needs {NUM_JOINTS} finite angles, got {text!r}")
    return pose
