"""Deployment settings: conventions at the policy boundary, deployment.json, legacy checkpoints."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evo1_ros.model.config import Evo1Config
from evo1_ros.robot import xarm6
from evo1_ros.runtime.chunking import RTCConfig
from evo1_ros.runtime.deployment import (DEPLOYMENT_FILE, Conventions, DeploymentConfig, DeploymentError, Dim,
                                         load_deployment, migrate, xarm6_dims)

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "evo1-tiny-sim"
REFERENCE = Conventions(state=xarm6_dims("deg", "sdk"), action=xarm6_dims("deg", "sdk"), views=["base", "wrist"])


def test_reference_conventions_convert_both_ways():
    ros_state = np.array([0.1, -0.5, -1.0, 0.0, 1.2, np.pi / 2, 0.85])  # 0.85 = drive_joint closed
    policy_state = REFERENCE.state_to_policy(ros_state)
    np.testing.assert_allclose(policy_state[:6], np.rad2deg(ros_state[:6]))
    assert policy_state[6] == pytest.approx(0.0)  # SDK: 0 closed
    assert REFERENCE.state_to_policy(np.r_[np.zeros(6), 0.0])[6] == pytest.approx(xarm6.SDK_GRIPPER_OPEN)
    # Actions back to ROS units: degrees -> radians, SDK 850 open / 425 half -> drive_joint 0 / 0.425.
    actions = np.array([[90.0, 0, 0, 0, 0, -45.0, 850.0], [0, 0, 0, 0, 0, 0, 425.0]])
    ros = REFERENCE.actions_to_ros(actions, policy_state)
    np.testing.assert_allclose(ros[0], [np.pi / 2, 0, 0, 0, 0, -np.pi / 4, 0.0], atol=1e-12)
    assert ros[1, 6] == pytest.approx(0.425)
    # A round trip through the policy's units is the identity.
    np.testing.assert_allclose(REFERENCE.actions_to_ros(policy_state[None], policy_state)[0], ros_state, atol=1e-12)
    assert not REFERENCE.is_ros and Conventions().is_ros


def test_relative_actions_are_offsets_from_the_observed_state():
    conventions = Conventions(state=xarm6_dims("deg"), action=xarm6_dims("deg", relative=True))
    state = np.array([0.2, 0.1, -0.3, 0.0, 0.5, 0.0, 0.4])
    policy_state = conventions.state_to_policy(state)
    deltas = np.zeros((3, 7))
    deltas[:, 0] = [0.0, 1.0, 2.0]  # degrees past the observation's joint1
    deltas[:, 6] = 0.6  # the gripper stays absolute
    ros = conventions.actions_to_ros(deltas, policy_state)
    np.testing.assert_allclose(ros[:, 0], state[0] + np.deg2rad([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(ros[:, 1:6], np.broadcast_to(state[1:6], (3, 5)))
    np.testing.assert_allclose(ros[:, 6], 0.6)


def test_bgr_checkpoints_get_their_views_flipped():
    frame = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    flipped, missing = Conventions(color_order="bgr").frames_to_policy([frame, None])
    np.testing.assert_array_equal(flipped, frame[..., ::-1])
    assert missing is None
    assert Conventions().frames_to_policy([frame])[0] is frame


@pytest.mark.parametrize("settings, words", [
    ({"conventions": {"state": [{"meaning": "joint", "unit": "furlong"}]}}, "unit must be one of"),
    ({"conventions": {"action": [{"meaning": "gripper", "unit": "sdk"}]}}, "xArm6 joints in order"),
    ({"conventions": {"state": [{"meaning": "joint", "unit": "rad", "relative": True}]}}, "action dimensions only"),
    ({"conventions": {"color_order": "hsv"}}, "color_order"),
    ({"conventions": {"views": ["base", "base"]}}, "view names repeat"),
    ({"conventions": {"lens": "wide"}}, "unknown conventions keys"),
    ({"chunk_mode": "blend"}, "chunk_mode must be one of"),
    ({"request_threshold": 1.5}, "request_threshold must be in"),
    ({"noise_scale": -0.1}, "noise_scale must be in"),
    ({"action_rate_hz": -10}, "action_rate_hz must be"),
    ({"sampler": "ddim"}, "unknown keys"),
    ({"chunk_mode": "rtc", "rtc": {"execution_horizon": 0}}, "rtc: execution_horizon must be a whole number"),
    ({"rtc": {"max_guidance_weight": -1}}, "rtc: max_guidance_weight must be finite and >= 0"),
    ({"rtc": {"schedule": "exp"}}, "rtc: unknown RTC schedule 'exp'"),
    ({"rtc": {"horizon": 8}}, "rtc: .*unexpected keyword argument 'horizon'"),
])
def test_bad_deployment_settings_are_refused_naming_the_problem(tmp_path, settings, words):
    (tmp_path / DEPLOYMENT_FILE).write_text(json.dumps(settings))
    with pytest.raises(DeploymentError, match=words) as error:
        load_deployment(tmp_path)
    assert str(tmp_path / DEPLOYMENT_FILE) in str(error.value)


def test_deployment_settings_round_trip_and_default_when_absent(tmp_path):
    assert load_deployment(tmp_path) == DeploymentConfig()  # an older checkpoint without any: the defaults
    settings = DeploymentConfig(action_rate_hz=15.0, chunk_mode="crossfade", request_threshold=0.4, noise_scale=0.5,
                                instructions=["open the drawer"], conventions=REFERENCE)
    settings.save(tmp_path)
    assert load_deployment(tmp_path) == settings
    rtc = DeploymentConfig(chunk_mode="rtc", rtc={"execution_horizon": 6, "max_guidance_weight": 4.0})
    assert rtc.rtc == RTCConfig(execution_horizon=6, max_guidance_weight=4.0)  # the rest: RTCConfig's defaults
    rtc.save(tmp_path)
    assert load_deployment(tmp_path) == rtc
    (tmp_path / DEPLOYMENT_FILE).write_text("{not json")
    with pytest.raises(DeploymentError, match="not valid JSON"):
        load_deployment(tmp_path)


def test_the_bundled_checkpoint_is_migrated():
    config = json.loads((BUNDLED / "config.json").read_text())
    assert not {"noise_scale", "action_rate_hz", "chunk_mode", "request_threshold"} & set(config)
    with warnings_as_errors():
        settings = load_deployment(BUNDLED)
    assert (settings.action_rate_hz, settings.chunk_mode, settings.request_threshold, settings.noise_scale) == (
        10.0, "open_loop", 0.0, 0.0)
    assert settings.instructions == ["put the can in the box"] and settings.conventions.views == ["base", "wrist"]
    assert settings.conventions.is_ros


def test_legacy_config_keys_are_read_with_a_warning_and_migrate_moves_them(tmp_path):
    shutil.copy(BUNDLED / "config.json", tmp_path / "config.json")
    config = json.loads((tmp_path / "config.json").read_text())
    legacy = {"noise_scale": 0.0, "action_rate_hz": 10.0, "chunk_mode": "open_loop", "request_threshold": 0.0}
    (tmp_path / "config.json").write_text(json.dumps({**config, **legacy}))
    # The model ignores them (they are not the network's) ...
    assert Evo1Config.from_dict({**config, **legacy}) == Evo1Config.from_dict(config)
    # ... the runtime still honours them, and says how to move them.
    with pytest.warns(UserWarning, match="--migrate"):
        settings = load_deployment(tmp_path)
    assert (settings.chunk_mode, settings.noise_scale, settings.action_rate_hz) == ("open_loop", 0.0, 10.0)
    migrate(tmp_path, instructions=["stack the cups"])
    assert json.loads((tmp_path / "config.json").read_text()) == config
    with warnings_as_errors():
        moved = load_deployment(tmp_path)
    assert moved == DeploymentConfig(**legacy, instructions=["stack the cups"])
    with pytest.raises(DeploymentError, match="exists already"):
        migrate(tmp_path)


def test_loading_deployment_settings_needs_no_torch():
    code = ("import sys; from evo1_ros.runtime.deployment import load_deployment; "
            f"print(load_deployment({str(BUNDLED)!r}).instructions); assert 'torch' not in sys.modules, 'torch'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "put the can in the box" in out.stdout


def test_the_model_config_does_not_import_the_runtime():
    code = "import sys, evo1_ros.model.config; assert not any(m.startswith('evo1_ros.runtime') for m in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr


def test_dims_name_their_meaning():
    with pytest.raises(DeploymentError, match="meaning must be one of"):
        Dim("wrist", "rad")
    assert "state [6 x deg, sdk]" in REFERENCE.describe()


def test_training_data_defines_rate_views_and_instructions(tmp_path):
    from evo1_ros.train.data import dataset_deployment

    for name, instructions in (("a", ["put the can in the box", "stack the cans"]), ("b", ["stack the cans"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({
            "fps": 10.0, "cameras": ["base", "wrist"], "episodes": [{"instruction": i} for i in instructions]}))
    settings = dataset_deployment([tmp_path / "a", tmp_path / "b"])
    assert settings.action_rate_hz == 10.0 and settings.conventions.views == ["base", "wrist"]
    assert settings.instructions == ["put the can in the box", "stack the cans"] and settings.conventions.is_ros


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)
