"""`evo1-ros import`: a reference or LeRobot Evo-1 checkpoint -> an evo1_ros checkpoint.

The weights, tokenizer and normalisation come through the model's importers; the deployment
settings (runtime/deployment.py) say how the imported policy sees the robot. `--format reference`
writes the reference xArm6 client's conventions (MINT-SJTU/Evo-1 `Evo1_client_xarm6.py`): joints in
degrees, the SDK gripper position (0 closed .. 850 open), absolute actions, RGB, views base +
wrist. `--format lerobot` takes the views from the policy's image features and the ROS units as
default. Every convention can be overridden.
"""

from __future__ import annotations

import argparse
import sys

from ..robot.xarm6 import NUM_JOINTS

# The reference xArm6 client's conventions (SPEC §2), the defaults of --format reference.
REFERENCE = {"joint_unit": "deg", "gripper_unit": "sdk", "actions": "absolute", "color_order": "rgb",
             "views": ["base", "wrist"]}
ROS = {"joint_unit": "rad", "gripper_unit": "drive_joint", "actions": "absolute", "color_order": "rgb"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint directory to convert")
    parser.add_argument("--format", required=True, choices=["reference", "lerobot"])
    parser.add_argument("--tokenizer", required=True, help="local InternVL3-1B-hf directory (its tokenizer)")
    parser.add_argument("--out", required=True, help="evo1_ros checkpoint directory to write")
    conv = parser.add_argument_group("conventions (how the policy sees the robot; default: the format's own)")
    conv.add_argument("--joint-unit", choices=["rad", "deg"], help="joint angles of state and action "
                      "(reference: deg; lerobot: rad)")
    conv.add_argument("--gripper-unit", choices=["drive_joint", "sdk"],
                      help="drive_joint: ROS 0 open .. 0.85 closed; sdk: xArm SDK 0 closed .. 850 open "
                           "(reference: sdk; lerobot: drive_joint)")
    conv.add_argument("--actions", choices=["absolute", "relative"],
                      help="joint actions absolute, or relative to the state at the chunk's observation")
    conv.add_argument("--color-order", choices=["rgb", "bgr"], help="channel order the views were trained with")
    conv.add_argument("--views", help="camera names in view-slot order, comma separated "
                      "(reference: base,wrist; lerobot: its observation.images.* features)")
    conv.add_argument("--action-rate", type=float, default=0.0, metavar="HZ",
                      help="rate of the actions in a chunk (the training data's); 0 = unknown (default)")
    conv.add_argument("--instructions", nargs="*", default=[], metavar="TEXT",
                      help="the instructions the checkpoint was trained on")


def conventions(args, defaults: dict, views: list[str]):
    from .deployment import Conventions, xarm6_dims

    def pick(name):
        value = getattr(args, name)
        return defaults[name] if value is None else value

    state = xarm6_dims(pick("joint_unit"), pick("gripper_unit"))
    action = xarm6_dims(pick("joint_unit"), pick("gripper_unit"), relative=pick("actions") == "relative")
    chosen = [v.strip() for v in args.views.split(",") if v.strip()] if args.views else views
    return Conventions(state=state, action=action, color_order=pick("color_order"), views=chosen)


def lerobot_views(source: str) -> list[str]:
    """Camera names of a LeRobot policy's image features, in the order it fills view slots."""
    import json
    from pathlib import Path

    features = json.loads((Path(source) / "config.json").read_text()).get("input_features", {})
    prefix = "observation.images."
    return [k[len(prefix):] for k, f in features.items() if k.startswith(prefix) and f.get("type") == "VISUAL"]


def run(args) -> int:
    from ..model.checkpoint import CheckpointError, import_lerobot, import_reference, save_checkpoint
    from .deployment import DeploymentConfig, DeploymentError

    try:
        if args.format == "reference":
            model, processor = import_reference(args.source, args.tokenizer)
            convention = conventions(args, REFERENCE, REFERENCE["views"])
        else:
            model, processor = import_lerobot(args.source, args.tokenizer)
            convention = conventions(args, ROS, lerobot_views(args.source))
        deployment = DeploymentConfig(action_rate_hz=args.action_rate, instructions=list(args.instructions),
                                      conventions=convention)
        if processor.normalizer is not None:
            dims = (processor.normalizer.state_dim, processor.normalizer.action_dim)
            if dims != (NUM_JOINTS + 1,) * 2:
                raise DeploymentError(f"the normalisation has {dims[0]} state and {dims[1]} action dims; the xArm6 "
                                      f"conventions declare {NUM_JOINTS + 1} (6 joints + gripper)")
    except (CheckpointError, DeploymentError, OSError) as e:
        print(f"evo1-ros import: error: {e}", file=sys.stderr)
        return 1
    save_checkpoint(args.out, model, processor.tokenizer, processor.normalizer)
    deployment.save(args.out)
    notes = [] if processor.normalizer else ["no norm_stats.json found: add one before deploying"]
    if not deployment.action_rate_hz:
        notes.append("action rate unknown: pass --action-rate (the inference node otherwise runs 30 Hz)")
    print(f"imported {args.format} checkpoint {args.source} -> {args.out}: "
          f"{sum(p.numel() for p in model.parameters()):,d} parameters, every key matched; "
          f"conventions: {convention.describe()}" + "".join(f"\nnote: {n}" for n in notes))
    return 0
