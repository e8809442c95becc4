"""`evo1-ros demo`: the README's main command, headless, end to end; and its parts without ROS."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from evo1_ros.graphs.demo import SHEET_COLUMNS, SHEET_ROWS, Recording  # noqa: E402
from evo1_ros.sim.metrics import commanded_path, largest_seam_jump, mean_abs_jerk  # noqa: E402


def frame_set(i, size=32):
    """Two camera images that differ from frame to frame (a moving bright square)."""
    base = np.zeros((size, size, 3), np.uint8)
    base[10:20, i % (size - 10):i % (size - 10) + 10] = 255
    return [base, np.full((size, size, 3), 8 * i % 256, np.uint8)]


@pytest.mark.parametrize("mp4", [True, False])
def test_recording_writes_video_and_sheet(tmp_path, monkeypatch, mp4):
    if not mp4:  # an OpenCV without an MP4 encoder: the writer does not open, a GIF is written instead
        monkeypatch.setattr(cv2, "VideoWriter", lambda *a: type("Closed", (), {"isOpened": lambda self: False})())
    rec = Recording(tmp_path, fps=10.0, seconds=2.0)
    for i in range(20):
        rec.add(100.0 + i / 10, frame_set(i))
    written = rec.close()
    assert written["frames"] == 20 and written["camera_fps"] == pytest.approx(10.0)
    video = tmp_path / written["video"]
    assert video.suffix == (".mp4" if mp4 else ".gif")
    if mp4:
        capture = cv2.VideoCapture(str(video))
        assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 20
    else:
        ok, animation = cv2.imreadanimation(str(video))
        assert ok and len(animation.frames) == 20
    sheet = cv2.imread(str(tmp_path / written["contact_sheet"]))
    assert sheet.shape == (SHEET_ROWS * 32, SHEET_COLUMNS * 64, 3)
    # stills spread over the run: the first and last tiles show different moments
    assert np.abs(sheet[:32, :64].astype(int) - sheet[-32:, -64:]).mean() > 5


def test_jerk_of_known_trajectories():
    t = np.arange(0, 2, 0.01)
    ramp = np.stack([0.5 * t] * 6, axis=1)
    cubic = np.stack([t**3] * 6, axis=1)  # d^3/dt^3 = 6 everywhere
    assert mean_abs_jerk(t, ramp, 0.02) == pytest.approx(0.0, abs=1e-6)
    assert mean_abs_jerk(t, cubic, 0.02) == pytest.approx(6.0, rel=1e-3)
    assert mean_abs_jerk(t[:3], cubic[:3], 0.02) is None


def test_jerk_of_jittery_windows_is_the_plans():
    """The inference node's ticks come late now and then, so consecutive windows may start two plan
    steps apart: the commanded path must still be the plan, not the plan with holes."""
    dt = 1 / 30
    plan_t = 0.013 + dt * np.arange(120)
    plan_q = np.stack([plan_t**3] * 6, axis=1)
    ticks = dt * np.arange(1, 100) + np.random.default_rng(0).uniform(0, 0.9 * dt, 99)
    windows = [(plan_t[plan_t > now][:50], plan_q[plan_t > now][:50]) for now in ticks]
    firsts = np.array([w[0][0] for w in windows])
    assert (np.diff(firsts) > 1.5 * dt).any()  # some ticks did skip a plan step
    times, positions = commanded_path(windows)
    assert mean_abs_jerk(times, positions, dt) == pytest.approx(6.0, rel=0.02)
    # what first points alone would say: the holes read as jerk
    assert mean_abs_jerk(firsts, np.stack([firsts**3] * 6, axis=1), dt) > 7.0


def test_largest_seam_jump_is_where_a_new_plan_takes_over():
    """Windows of one plan agree wherever they overlap: no jump, however the ticks fall. A new plan
    offset by 0.2 rad, or one that starts after the old ran out (the arm held its last target), shows
    as that jump."""
    dt = 0.1
    plan_t = dt * np.arange(40)
    plan_q = np.stack([np.sin(plan_t)] * 6, axis=1)
    ticks = dt * np.arange(30) + 0.03
    windows = [(plan_t[plan_t > now][:16], plan_q[plan_t > now][:16]) for now in ticks]
    assert largest_seam_jump(windows) == pytest.approx(0.0, abs=1e-12)
    seam = 12  # from this tick on, a new plan: the old one plus 0.2 rad on joint 3
    shifted = [(t, q + np.where(np.arange(6) == 2, 0.2, 0.0)) for t, q in windows[seam:]]
    assert largest_seam_jump(windows[:seam] + shifted) == pytest.approx(0.2)
    # The old plan ends at 1.0 s (held there); the next window starts 0.5 s later, further along.
    ended = (plan_t[:11], plan_q[:11])
    later = (plan_t[15:25], plan_q[15:25])
    assert largest_seam_jump([ended, later]) == pytest.approx(np.sin(1.5) - np.sin(1.0))
    assert largest_seam_jump(windows[:1]) is None


DEMO_SEED = 2  # a scene the bundled checkpoint solves on sim time (README)


@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.slow
def test_demo_solves_a_scene_headless_on_sim_time(tmp_path):
    """The README's demo command with the bundled checkpoint, on the sim's clock so that this
    machine's speed does not decide the outcome: the can ends up in the box."""
    pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "evo1_ros.cli", "demo", "--sim-time", "--seed", str(DEMO_SEED),
                           "--seconds", "12", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["random_weights"] and summary["checkpoint"].endswith("evo1-tiny-sim")
    assert summary["clock"] == "sim" and summary["seed"] == DEMO_SEED
    assert summary["seconds"] == pytest.approx(12.0, abs=0.5)
    assert summary["chunks"] >= 2 and summary["inference_latency_ms"]["p50"] > 0
    assert summary["achieved_control_rate_hz"] > 0  # trajectories went out on the driver's topic
    # The checkpoint plays each chunk whole (request_threshold 0): the next is asked for only when
    # the plan has run out, so seams cost ticks with nothing to send, and the demo counts them.
    assert summary["stalls"] >= 1 and summary["achieved_control_rate_fraction"] >= 0.85
    assert 0 < summary["largest_seam_jump_rad"] < 0.5
    assert summary["inference"]["backend"] in ("onnx", "torch")  # auto, said which
    assert "stalls after the first chunk; largest jump at a chunk seam" in proc.stdout
    assert summary["frames"] == pytest.approx(120, abs=3)  # 10 fps in sim time: every frame, however slow the CPU
    assert summary["success"] is True

    video = out / summary["video"]
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (got := capture.read())[0]:
        frames.append(got[1])
    assert len(frames) == summary["frames"]
    assert frames[0].shape == (224, 448, 3)  # base | wrist
    # The arm moved (the policy's trajectories drove the sim): the wrist camera's view changed, and
    # no frame is blank. (The base camera's corner carries a time stamp, so it is not the witness.)
    wrist = [f[:, 224:].astype(int) for f in frames]
    assert max(np.abs(w - wrist[0]).mean() for w in wrist) > 2
    assert min(f.std() for f in frames) > 10
    sheet = cv2.imread(str(out / summary["contact_sheet"]))
    assert sheet.shape == (SHEET_ROWS * 224, SHEET_COLUMNS * 448, 3)
