"""`evo1-ros check`: 0 on the bundled sim checkpoint, 1 with a sentence when declared units are wrong."""

from pathlib import Path

import numpy as np
import pytest

from evo1_ros import cli
from evo1_ros.model.build import build_model
from evo1_ros.model.checkpoint import save_checkpoint
from evo1_ros.model.processor import Normalizer
from evo1_ros.robot import xarm6
from evo1_ros.runtime.deployment import Conventions, DeploymentConfig, xarm6_dims

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "evo1-tiny-sim"


def run(capsys, *argv):
    code = cli.main(["check", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def checkpoint(path, trained_in: str, declared: str):
    """A random evo1-tiny whose statistics are the arm's limits in `trained_in` units (deg: degrees and
    SDK gripper; rad: radians and drive_joint), declaring `declared` units."""
    model, tokenizer = build_model("evo1-tiny", seed=0)
    lo, hi = np.append(xarm6.JOINT_LOWER, 0.0), np.append(xarm6.JOINT_UPPER, xarm6.GRIPPER_CLOSED)
    if trained_in == "deg":
        lo, hi = np.append(np.rad2deg(lo[:6]), 0.0), np.append(np.rad2deg(hi[:6]), xarm6.SDK_GRIPPER_OPEN)
    stats = {"min": lo.tolist(), "max": hi.tolist()}
    save_checkpoint(path, model, tokenizer, Normalizer("xarm6", "bounds", {"observation.state": stats,
                                                                           "action": dict(stats)}))
    units = ("deg", "sdk") if declared == "deg" else ("rad", "drive_joint")
    conventions = Conventions(xarm6_dims(*units), xarm6_dims(*units), views=["base", "wrist"])
    DeploymentConfig(action_rate_hz=10.0, noise_scale=0.0, instructions=["pick up the can"],
                     conventions=conventions).save(path)
    return path


def test_the_bundled_sim_checkpoint_passes(capsys):
    code, out, err = run(capsys, BUNDLED)
    assert code == 0, err
    assert "state [6 x rad, drive_joint]" in out and "views ['base', 'wrist']" in out
    assert "action rate: 10.0 Hz" in out and "latency:" in out and out.strip().endswith("inside its limits")


def test_radians_fed_to_a_checkpoint_declared_in_degrees_fail_with_a_sentence(tmp_path, capsys):
    # Trained in radians, declared in degrees: the arm's 1.2 rad become 68.8 "degrees", far outside
    # the +-3.1 it was trained on.
    path = checkpoint(tmp_path / "ck", trained_in="rad", declared="deg")
    code, out, err = run(capsys, path, "--robot-state", "0.2,-0.3,-0.6,0.1,1.2,0.0,0.4")
    assert code == 1
    assert "declared units" in err and "probably not the ones it was trained in" in err


def test_a_degree_checkpoint_declared_in_radians_fails(tmp_path, capsys):
    # Trained in degrees and SDK units but declared in radians: its outputs (tens of degrees) are
    # read as radians: far from the arm and outside its limits.
    path = checkpoint(tmp_path / "ck", trained_in="deg", declared="rad")
    code, out, err = run(capsys, path, "--robot-state", "0.2,-0.3,-0.6,0.1,1.2,0.0,0.4")
    assert code == 1
    assert "check the declared units" in err or "joint limits" in err
    # Declared right, the same weights read the state right (whatever a random head predicts).
    assert "probably not" not in run(capsys, checkpoint(tmp_path / "ok", "deg", "deg"),
                                     "--robot-state", "0.2,-0.3,-0.6,0.1,1.2,0.0,0.4")[2]


@pytest.mark.parametrize("state, words", [("1,2,3", "expected 7 finite numbers"),
                                          ("a,b,c,d,e,f,g", "expected 7 comma-separated numbers"),
                                          (",".join(["nan"] * 7), "expected 7 finite numbers")])
def test_bad_robot_state_is_refused(capsys, state, words):
    code, _, err = run(capsys, BUNDLED, "--robot-state", state)
    assert code == 1 and words in err


def test_a_missing_checkpoint_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, tmp_path / "nothing")
    assert code == 1 and "config.json is missing" in err


def test_check_reads_the_observation_from_a_bag(tmp_path, capsys):
    pytest.importorskip("rclpy")
    from test_data_convert import synthetic_messages, write_bag

    episode = write_bag(tmp_path / "ep", synthetic_messages(0.5))
    _, out, err = run(capsys, BUNDLED, "--bag", episode)
    # The bag's first joint state once both cameras have a frame (all stamped T0), and its instruction.
    state = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]
    assert f"observation: bag {episode}, state {state}, instruction 'stack the cubes'" in out, err
    assert "first action:" in out
