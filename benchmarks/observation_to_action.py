"""Observation -> first action latency of the inference node, over real rclpy/DDS.

The node takes the newest images + joint state on a control tick, runs the policy on its worker
thread, and publishes the chunk's first action on the first tick after the chunk is ready. This
measures that span per chunk (the node's own `obs_to_action`: inference time plus the wait for
the next tick) with an evo1 checkpoint (default: a fresh random evo1-tiny) on CPU, fed synthetic 640x480 frames.

    python benchmarks/observation_to_action.py [--checkpoint DIR] [--seconds 30] [--rate 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))  # away from a running graph

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from evo1_ros.nodes.inference import InferenceNode  # noqa: E402
from evo1_ros.nodes.messages import array_to_image  # noqa: E402
from evo1_ros.robot import xarm6  # noqa: E402


def percentiles(values) -> dict:
    v = np.asarray(values) * 1e3
    return {"n": len(v), "p50_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="evo1 checkpoint (default: a fresh random evo1-tiny)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=30.0, help="control rate, Hz")
    ap.add_argument("--json")
    args = ap.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = tempfile.mkdtemp() + "/tiny"
        subprocess.run([sys.executable, "-m", "evo1_ros.cli", "init", "--preset", "evo1-tiny", "--out", checkpoint],
                       check=True, capture_output=True)

    rclpy.init()
    node = InferenceNode(parameter_overrides=[
        rclpy.parameter.Parameter("checkpoint", value=checkpoint),
        rclpy.parameter.Parameter("instruction", value="put the can in the box"),
        rclpy.parameter.Parameter("control_rate_hz", value=args.rate),
    ])
    feeder = rclpy.create_node("observation_feeder")
    cams = [feeder.create_publisher(Image, t, qos_profile_sensor_data) for t in node.camera_topics]
    joints = feeder.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in cams]

    def feed():
        stamp = feeder.get_clock().now().to_msg()
        for pub, frame in zip(cams, frames):
            msg = array_to_image(frame, "rgb8")
            msg.header.stamp = stamp
            pub.publish(msg)
        state = JointState(name=list(xarm6.JOINT_NAMES) + [xarm6.GRIPPER_JOINT],
                           position=list(xarm6.HOME) + [0.0])
        state.header.stamp = stamp
        joints.publish(state)

    feeder.create_timer(1.0 / 30.0, feed)  # cameras and joint states at 30 Hz
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(feeder)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    time.sleep(args.seconds)
    obs_to_action = list(node.obs_to_action)
    executor.shutdown()
    node.destroy_node()
    feeder.destroy_node()
    rclpy.try_shutdown()

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"nproc={os.cpu_count()} {platform.processor()}",
        "checkpoint": checkpoint, "control_rate_hz": args.rate,
        "observation_to_first_action": percentiles(obs_to_action),
    }
    r = result["observation_to_first_action"]
    print(f"{'':28s} {'chunks':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    print(f"{'observation -> 1st action':28s} {r['n']:6d} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['max_ms']:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
