"""Observation -> first action latency and control-tick steadiness of the inference node, over rclpy/DDS.

The node takes the newest images + joint state on a control tick, runs the policy on its worker
thread, and publishes the chunk's first action on the first tick after the chunk is ready. This
measures that span per chunk (the node's own `obs_to_action`: inference time plus the wait for
the next tick) with an evo1 checkpoint (default: a fresh random evo1-tiny) on CPU, fed synthetic
640x480 frames and 100 Hz joint states; and the period between trajectory windows as a listener
receives them, with the CPU time the process spent. `--executor multi` spins the same nodes on
rclpy's MultiThreadedExecutor instead of the SingleThreadedExecutor our executables use.

    python benchmarks/observation_to_action.py [--checkpoint DIR] [--seconds 30] [--rate 30]
        [--executor single|multi|both] [--json OUT]
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
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from evo1_ros.nodes.inference import InferenceNode  # noqa: E402
from evo1_ros.nodes.messages import array_to_image  # noqa: E402
from evo1_ros.robot import xarm6  # noqa: E402


def percentiles(values) -> dict:
    v = np.asarray(values) * 1e3
    return {"n": len(v), "p50_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max())}


def run(checkpoint: str, rate: float, seconds: float, executor_kind: str) -> dict:
    rclpy.init()
    node = InferenceNode(parameter_overrides=[
        rclpy.parameter.Parameter("checkpoint", value=checkpoint),
        rclpy.parameter.Parameter("instruction", value="put the can in the box"),
        rclpy.parameter.Parameter("control_rate_hz", value=rate),
    ])
    feeder = rclpy.create_node("observation_feeder")
    cams = [feeder.create_publisher(Image, t, qos_profile_sensor_data) for t in node.camera_topics]
    joints = feeder.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    windows = []  # receive times of the node's trajectory windows
    feeder.create_subscription(JointTrajectory, node.get_parameter("trajectory_topic").value,
                               lambda _: windows.append(time.perf_counter()), 10)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in cams]

    def feed_images():
        stamp = feeder.get_clock().now().to_msg()
        for pub, frame in zip(cams, frames):
            msg = array_to_image(frame, "rgb8")
            msg.header.stamp = stamp
            pub.publish(msg)

    def feed_state():
        state = JointState(name=list(xarm6.JOINT_STATE_NAMES), position=list(xarm6.HOME) + [0.0])
        state.header.stamp = feeder.get_clock().now().to_msg()
        joints.publish(state)

    feeder.create_timer(1.0 / 30.0, feed_images)  # RealSense colour at 30 Hz
    feeder.create_timer(1.0 / 100.0, feed_state)  # xArm joint states at 100 Hz
    executor = SingleThreadedExecutor() if executor_kind == "single" else MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(feeder)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    cpu = time.process_time()
    spinner.start()
    time.sleep(seconds)
    cpu = time.process_time() - cpu
    obs_to_action = list(node.obs_to_action)
    executor.shutdown()
    node.destroy_node()
    feeder.destroy_node()
    rclpy.try_shutdown()
    # The first tenth of the windows is left out: start-up, while the policy's first calls warm up.
    return {"observation_to_first_action": percentiles(obs_to_action),
            "window_period": percentiles(np.diff(windows[len(windows) // 10:])),
            "cpu_s_per_s": cpu / seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="evo1 checkpoint (default: a fresh random evo1-tiny)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=30.0, help="control rate, Hz")
    ap.add_argument("--executor", choices=["single", "multi", "both"], default="single")
    ap.add_argument("--json")
    args = ap.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = tempfile.mkdtemp() + "/tiny"
        subprocess.run([sys.executable, "-m", "evo1_ros.cli", "init", "--preset", "evo1-tiny", "--out", checkpoint],
                       check=True, capture_output=True)
    kinds = ["single", "multi"] if args.executor == "both" else [args.executor]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"nproc={os.cpu_count()} {platform.processor()}",
        "checkpoint": checkpoint, "control_rate_hz": args.rate, "seconds": args.seconds,
        "executors": {kind: run(checkpoint, args.rate, args.seconds, kind) for kind in kinds},
    }
    print(f"{'executor':9s} {'':26s} {'n':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}   CPU s/s")
    for kind, r in result["executors"].items():
        for name in ("observation_to_first_action", "window_period"):
            v = r[name]
            print(f"{kind:9s} {name:26s} {v['n']:6d} {v['p50_ms']:8.1f} {v['p99_ms']:8.1f} {v['max_ms']:8.1f}"
                  + (f"   {r['cpu_s_per_s']:.2f}" if name == "window_period" else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
