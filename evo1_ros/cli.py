"""`evo1-ros`: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Those modules keep heavy imports (torch, rclpy, mujoco) inside `run`, so `evo1-ros --help`
stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "info": ("evo1_ros.model.info", "print a preset's or checkpoint's structure and parameter count"),
    "episodes": ("evo1_ros.data.episodes", "list recorded episode bags: outcome, length, task, operator"),
    "convert": ("evo1_ros.data.convert", "turn recorded episode bags into a training dataset"),
    "init": ("evo1_ros.model.init_cmd", "write a fresh checkpoint (random head, optional InternVL3-1B-hf backbone)"),
    "import": ("evo1_ros.runtime.import_cmd", "convert a reference or LeRobot Evo-1 checkpoint to ours"),
    "check": ("evo1_ros.runtime.check_cmd", "preflight a checkpoint: conventions, one chunk, distance from the arm"),
    "launch": ("evo1_ros.graphs.launch", "run a launch file's node graph in one process (no ros2 launch needed)"),
    "demo": ("evo1_ros.graphs.demo", "run the whole graph in the MuJoCo sim headless; write a video, stills, JSON"),
    "eval": ("evo1_ros.graphs.evaluate",
             "closed-loop evaluation in the sim through the ROS graph: success, time, jerk"),
    "record-sim": ("evo1_ros.graphs.record_sim", "record scripted-expert demonstrations in sim through the recorder"),
    "leader-calibrate": ("evo1_ros.teleop.leader_calibrate", "calibrate a Dynamixel leader arm's offsets and gripper"),
    "train": ("evo1_ros.train.train_cmd", "fine-tune Evo-1 on evo1 datasets in two stages (torchrun for multi-GPU)"),
    "export-onnx": ("evo1_ros.runtime.export_cmd", "export a checkpoint's action head to ONNX for onnxruntime"),
    "xarm-emulator": ("evo1_ros.xarm_emulator.cli", "an emulated xArm6 control box on a loopback address"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evo1-ros", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
