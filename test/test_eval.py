"""`evo1-ros eval` through the full ROS graph: the scripted expert in the policy's seat proves the
graph, its timing and the success detector work together."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]


@pytest.mark.slow
def test_expert_through_the_graph_succeeds(tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    out = tmp_path / "eval.json"
    # Small images at a low frame rate: the expert ignores them, the graph still carries them.
    proc = subprocess.run([sys.executable, "-m", "evo1_ros.cli", "eval", "--checkpoint", "expert", "--episodes", "10",
                           "--seed", "100", "--image-size", "64", "--fps", "5", "--max-seconds", "15",
                           "--out", str(out)], capture_output=True, text=True, timeout=500, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    episodes = results["per_episode"]
    assert [e["seed"] for e in episodes] == list(range(100, 110))
    assert results["success_rate"] >= 0.9, episodes
    # A success is the can staying in the box: the expert's plan takes 6-9 s, so no episode can
    # honestly end much sooner, and a detector that fired at once would show up here.
    assert all(4.0 < e["seconds"] < 15.0 for e in episodes if e["success"]), episodes
    # The expert's min-jerk plan through the chunk scheduler stays smooth (a random policy: ~10^4).
    assert 0 < results["mean_abs_jerk_rad_s3"] < 100
    assert results["achieved_control_rate_hz"] > 7.5  # 15 Hz asked: at least half of it on a loaded 2-core machine
    assert "eval" in proc.stderr  # the progress bar
    # The run reports the inference settings it ran with (here the params file's).
    assert results["inference"] == {"backend": "torch", "chunk_mode": "crossfade", "request_threshold": 0.5,
                                    "noise_scale": -1.0}


@pytest.mark.slow
def test_expert_on_sim_time_succeeds_at_the_exact_control_rate(tmp_path):
    """--sim-time: every node on the lockstep world's clock. In sim seconds the control rate is
    exactly the asked one and the plan plays at its own pace, however slow this machine is."""
    pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "evo1_ros.cli", "eval", "--checkpoint", "expert", "--episodes", "3",
                           "--seed", "200", "--image-size", "64", "--fps", "10", "--max-seconds", "15", "--sim-time",
                           "--out", str(out)], capture_output=True, text=True, timeout=500, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    episodes = results["per_episode"]
    assert results["clock"] == "sim" and results["speed"] == 1.0
    assert all(e["success"] for e in episodes), episodes
    # The expert's plan lasts 6-9 sim seconds: a sim clock running fast or slow against physics,
    # or a detector timing on the wall clock, would move these.
    assert all(5.0 < e["seconds"] < 10.0 for e in episodes), episodes
    assert all(abs(e["control_rate_hz"] - 10.0) < 0.1 for e in episodes), episodes
    assert 0 < results["mean_abs_jerk_rad_s3"] < 100


def test_graph_options_override_only_what_is_given():
    import argparse

    from evo1_ros.graphs.demo import add_graph_arguments, inference_overrides

    parser = argparse.ArgumentParser()
    add_graph_arguments(parser)
    assert inference_overrides(parser.parse_args([])) == {}
    args = parser.parse_args(["--backend", "onnx", "--chunk-mode", "open_loop", "--request-threshold", "0.2",
                              "--device", "cpu"])
    assert inference_overrides(args) == {"backend": "onnx", "chunk_mode": "open_loop", "request_threshold": 0.2,
                                         "device": "cpu"}


@pytest.mark.slow  # a minute on a loaded 2-core machine: sim world, DDS and torch start before the failure
def test_a_checkpoint_that_does_not_load_is_named(tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    proc = subprocess.run([sys.executable, "-m", "evo1_ros.cli", "eval", "--checkpoint", str(tmp_path / "missing"),
                           "--episodes", "1", "--image-size", "64"], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert proc.returncode == 1
    assert "evo1_inference failed to start" in proc.stderr and "config.json" in proc.stderr
    assert "Traceback" not in proc.stderr
