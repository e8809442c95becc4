"""Tasks, scenes, seed protocol and success intervals, without ROS: the detectors judge
hand-placed states right, the experts succeed, names are checked, scenes are seeded distributions."""

import json
import math

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN  # noqa: E402
from evo1_ros.runtime.deployment import DeploymentConfig, DeploymentError  # noqa: E402
from evo1_ros.sim import seeds  # noqa: E402
from evo1_ros.sim.expert import run_expert, solve_ik, top_down  # noqa: E402
from evo1_ros.sim.metrics import rate, wilson_interval  # noqa: E402
from evo1_ros.sim.mjcf import CAN_HEIGHT, CUP_HEIGHT, TARGET_RADIUS  # noqa: E402
from evo1_ros.sim.scenes import VARIATIONS, UnknownName, choose, parse_mix  # noqa: E402
from evo1_ros.sim.tasks import TASKS, instruction_warning, select, trained_instructions  # noqa: E402
from evo1_ros.sim.world import SimWorld  # noqa: E402

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def world():
    w = SimWorld(image_size=64)
    yield w
    w.close()


# --- success intervals and seeds ----------------------------------------------------------------


@pytest.mark.parametrize("successes, trials, low, high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),  # the textbook cases
    (43, 50, 0.7381, 0.9305), (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_matches_known_values(successes, trials, low, high):
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


def test_rates_carry_their_interval_and_bad_counts_are_refused():
    assert rate(17, 20) == {"successes": 17, "episodes": 20, "rate": 0.85, "wilson95": [0.6396, 0.9476]}
    # the example: 17/20 and 12/20 overlap
    assert rate(12, 20)["wilson95"][1] > rate(17, 20)["wilson95"][0]
    for bad in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_seed_ranges_are_disjoint_and_keep_the_bundled_checkpoints_seeds_apart():
    ranges = sorted(seeds.SEED_RANGES.values(), key=lambda r: r.first)
    assert all(a.stop <= b.first for a, b in zip(ranges, ranges[1:]))
    train, dev, test = (seeds.SEED_RANGES[n] for n in ("train", "dev", "test"))
    assert all(s in train for s in range(1000, 1200))  # the bundled checkpoint's demos
    assert all(s in dev for s in range(0, 50))  # its evals: tuned on, so dev
    assert train.stop - train.first >= 4 * 5 * 100 and test.stop - test.first >= 4 * 5 * 50
    assert seeds.parse_seeds("test") == test.first and seeds.parse_seeds("test+50") == test.first + 50
    for bad in ("bogus", "test+x", "dev+1000", "test+-1"):
        with pytest.raises(ValueError):
            seeds.parse_seeds(bad)
    assert seeds.check_episodes(test.first, 50) is test
    with pytest.raises(ValueError, match="straddle"):
        seeds.check_episodes(dev.stop - 5, 10)
    with pytest.raises(ValueError, match="only train"):
        seeds.check_episodes(0, 10, allowed=("train",))
    assert "test" in seeds.protocol() and "dev" in seeds.protocol()


# --- names --------------------------------------------------------------------------------------


def test_unknown_task_and_scene_names_are_refused_with_the_known_ones(world):
    with pytest.raises(UnknownName, match="known tasks: pick_place_can, stack_cans, place_at_target, pour_cup"):
        select("pick_and_pray", "default")
    with pytest.raises(UnknownName, match="known scenes: default, wide, distractor, lighting, camera, mixed"):
        select("all", "foggy")
    with pytest.raises(UnknownName, match="tasks it takes: pick_place_can, place_at_target"):
        select("pour_cup", "mixed")
    for bad in ("wide:0", "wide:-1", "wide:x", "default,default"):
        with pytest.raises(ValueError):
            parse_mix(bad)
    world.reset(7, task="stack_cans", scene="wide")
    with pytest.raises(UnknownName):
        world.reset(8, task="juggle")
    with pytest.raises(UnknownName):
        world.reset(8, scene="foggy")
    world.reset(8)  # refused settings changed nothing: the next episode is still stack_cans in wide
    assert (world.task.name, world.scene.name, world.seed) == ("stack_cans", "wide", 8)


def test_selection_expands_all():
    assert [(t.name, s.name) for t, s in select("all", "mixed")] == [
        ("pick_place_can", "mixed"), ("place_at_target", "mixed")]
    assert len(select("all", "all")) == 4 * 5
    assert [s.name for _, s in select("pick_place_can", "all")] == list(VARIATIONS)


# --- scenes -------------------------------------------------------------------------------------


def _snapshot(world, seed, task, scene):
    world.reset(seed, task=task, scene=scene)
    poses = {name: np.concatenate(p) for name, p in world.object_poses().items()}
    return poses, {cam: world.render(cam) for cam in ("base", "wrist")}


@pytest.mark.parametrize("scene", VARIATIONS)
def test_scenes_are_deterministic_per_seed(world, scene):
    poses, images = _snapshot(world, 5, "pick_place_can", scene)
    _snapshot(world, 6, "pick_place_can", scene)
    again_poses, again_images = _snapshot(world, 5, "pick_place_can", scene)
    assert poses.keys() == again_poses.keys()
    assert all(np.array_equal(poses[k], again_poses[k]) for k in poses)
    assert all(np.array_equal(images[c], again_images[c]) for c in images)


def test_scenes_differ_from_each_other(world):
    seed = 5
    shots = {scene: _snapshot(world, seed, "pick_place_can", scene) for scene in VARIATIONS}
    default_poses, default_images = shots["default"]
    for scene, (poses, images) in shots.items():
        if scene == "default":
            continue
        changed = sum(int((np.abs(images[c].astype(int) - default_images[c]).max(-1) > 40).sum()) for c in images)
        assert changed >= 5, f"{scene}: {changed} pixels differ from the default scene"
    # look variations keep the layout (their own random stream); the wide one moves things;
    # the distractor adds an object
    for scene in ("lighting", "camera"):
        assert all(np.array_equal(shots[scene][0][k], default_poses[k]) for k in default_poses)
    assert not np.array_equal(shots["wide"][0]["can"], default_poses["can"])
    assert set(shots["distractor"][0]) == {"can", "box", "distractor"} and set(default_poses) == {"can", "box"}
    # over many seeds the wide scene really spreads wider than the default
    spans = {}
    for scene in ("default", "wide"):
        xs = []
        for s in range(40):
            world.reset(s, scene=scene)
            xs.append(world.object_pose("can")[0][0])
        spans[scene] = np.ptp(xs)
    assert spans["wide"] > 1.2 * spans["default"]


def test_a_scene_mix_is_drawn_per_seed(world):
    mix = parse_mix("mix")
    assert [name for name, _ in mix] == list(VARIATIONS)
    drawn = [choose(mix, s).name for s in range(200)]
    assert set(drawn) == set(VARIATIONS) and drawn == [choose(mix, s).name for s in range(200)]
    weighted = [choose(parse_mix("default:9,wide:1"), s).name for s in range(400)]
    assert 0.8 < weighted.count("default") / 400 < 0.97
    world.reset(11, task="pick_place_can", scene="default:1,lighting:1")
    assert world.scene.name == choose(parse_mix("default:1,lighting:1"), 11).name


def test_the_mixed_scene_looks_the_same_under_either_task(world):
    one, images = _snapshot(world, 3, "pick_place_can", "mixed")
    other, other_images = _snapshot(world, 3, "place_at_target", "mixed")
    assert set(one) == {"can", "box", "target"}
    assert all(np.array_equal(one[k], other[k]) for k in one)
    assert all(np.array_equal(images[c], other_images[c]) for c in images)


def test_unused_objects_are_hidden_and_out_of_reach(world):
    world.reset(2, task="pick_place_can", scene="default")
    assert set(world.object_poses()) == {"can", "box"}
    for name in ("can2", "cup", "distractor", "target"):
        position = world.object_pose(name)[0]
        assert position[0] < -0.5, f"{name} not parked: {position}"
    world.step(0.5)  # parked objects float where they are put
    assert world.object_pose("cup")[0][2] == pytest.approx(0.5, abs=1e-3)


# --- detectors ----------------------------------------------------------------------------------


def _place(world, name, pos, quat=(1.0, 0.0, 0.0, 0.0)):
    """Put an object at any pose (the world's own placement keeps objects upright)."""
    adr = world.model.joint(name).qposadr[0]
    world.data.qpos[adr: adr + 7] = [*pos, *quat]
    mujoco.mj_forward(world.model, world.data)


def _tipped(angle: float) -> tuple:
    """Quaternion of a turn by `angle` about world x."""
    return (math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0)


def _hold(world, name):
    """Close the jaws on an object from above, the arm servoing there: the object is in the gripper."""
    pos = world.object_pose(name)[0]
    q = solve_ik(top_down((*pos[:2], pos[2] + 0.01), math.atan2(pos[1], pos[0])), world.joint_positions())
    world.data.qpos[:6] = q
    world.set_target(q, GRIPPER_CLOSED)
    world.step(0.6)


def _release(world):
    world.set_target(world.joint_positions(), GRIPPER_OPEN)
    world.step(0.6)


def test_stack_detector(world):
    world.reset(4, task="stack_cans")
    assert not world.success()  # two cans side by side
    base = world.object_pose("can2")[0]
    _place(world, "can", base + [0.0, 0.0, 0.6])  # far above: not resting on it
    assert not world.success()
    _place(world, "can", base + [0.0, 0.0, CAN_HEIGHT + 0.001])
    world.step(0.5)
    assert world.success()
    _hold(world, "can")  # stacked but still held
    assert world.in_gripper("can") and not world.success()
    _release(world)
    assert world.success()
    _place(world, "can", base + [0.0, 0.0, CAN_HEIGHT + 0.001], _tipped(math.radians(40)))  # leaning over
    assert not world.success()
    world.reset(4, task="stack_cans")
    _place(world, "can", world.object_pose("can")[0], _tipped(math.pi / 2))  # lying on the table
    _place(world, "can2", world.object_pose("can")[0] + [0.0, 0.0, CAN_HEIGHT])
    assert not world.success()


def test_target_detector(world):
    world.reset(4, task="place_at_target")
    assert not world.success()
    target = world.object_pose("target")[0]
    standing = target + [0.0, 0.0, CAN_HEIGHT / 2]
    _place(world, "can", standing + [TARGET_RADIUS, 0.0, 0.0])  # on the disc's rim
    assert not world.success()
    _place(world, "can", standing + [0.0, 0.0, 0.05])  # hovering over it
    assert not world.success()
    _place(world, "can", target + [0.0, 0.0, 0.033], _tipped(math.pi / 2))  # lying on it
    assert not world.success()
    _place(world, "can", standing)
    world.step(0.3)
    assert world.success()
    _hold(world, "can")
    assert not world.success()
    _release(world)
    assert world.success()


def test_pour_detector(world):
    world.reset(4, task="pour_cup")
    assert not world.success()  # upright on the table
    box = world.object_pose("box")[0]
    above = box + [0.0, 0.0, 0.3]
    _place(world, "cup", above)  # upright over the box
    assert not world.success()
    _place(world, "cup", above, _tipped(math.radians(100)))  # lying nearly level: opening not down
    assert not world.success()
    beside = box + [0.25, 0.0, 0.3]
    _place(world, "cup", beside, _tipped(math.pi))  # upside down beside the box
    assert not world.success()
    # the cup's centre over the box, its opening's centre beyond the wall (in the box's frame)
    box_pos, box_quat = world.object_pose("box")
    rot, quat = np.empty(9), np.empty(4)
    mujoco.mju_quat2Mat(rot, box_quat)
    mujoco.mju_mulQuat(quat, box_quat, np.array(_tipped(math.radians(135))))  # opening toward the box's -y
    _place(world, "cup", box_pos + rot.reshape(3, 3) @ [0.0, -0.06, 0.3], quat)
    assert not world.success()
    _place(world, "cup", box_pos + rot.reshape(3, 3) @ [0.0, 0.03, 0.3], quat)  # moved in: now it pours
    assert world.success()
    for tilt in (math.radians(125), math.pi):
        _place(world, "cup", above, _tipped(tilt))
        assert world.success(), tilt


def test_pick_place_detector_judges_the_can_in_the_box(world):
    world.reset(4, task="pick_place_can")
    box = world.object_pose("box")[0]
    _place(world, "can", box + [0.0, 0.0, 0.3])
    assert not world.success()
    _place(world, "can", box + [0.0, 0.0, 0.01 + CAN_HEIGHT / 2])
    world.step(0.3)
    assert world.success()


# --- experts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_each_expert_succeeds(world, task):
    world.reset(seeds.SEED_RANGES["test"].first, task=task, scene="default")
    outcomes = [run_expert(world, seed) for seed in (100_000, 100_001)]
    assert all(outcomes), outcomes


@pytest.mark.slow  # 4 tasks x 4 scenes, one seed each: ~40 s on 2 cores
@pytest.mark.parametrize("scene", ("wide", "distractor", "lighting", "camera"))
def test_experts_succeed_in_every_scene(world, scene):
    for task in TASKS:
        world.reset(0, task=task, scene=scene)
        assert run_expert(world, 100_010), (task, scene)


def test_in_the_mixed_scene_each_expert_does_its_own_task(world):
    for task, other in (("pick_place_can", "place_at_target"), ("place_at_target", "pick_place_can")):
        world.reset(0, task=task, scene="mixed")
        assert run_expert(world, 100_002)
        assert not TASKS[other].success(world)


def test_cup_height_sets_its_rest_pose(world):
    world.reset(4, task="pour_cup", scene="default")
    assert world.object_pose("cup")[0][2] == pytest.approx(CUP_HEIGHT / 2)


# --- checkpoints --------------------------------------------------------------------------------


def test_a_checkpoint_tells_its_instructions_or_is_said_not_to(tmp_path):
    silent = tmp_path / "silent"
    silent.mkdir()
    (silent / "config.json").write_text(json.dumps({"model_type": "evo1"}))
    assert trained_instructions(silent) is None
    assert "does not say" in instruction_warning(silent, "put the can in the box")
    assert trained_instructions(tmp_path / "missing") is None

    told = tmp_path / "told"
    told.mkdir()
    DeploymentConfig(action_rate_hz=10.0, instructions=["put the can in the box"]).save(told)
    assert instruction_warning(told, "put the can in the box") is None
    warning = instruction_warning(told, "stack one can on top of the other")
    assert "not trained on 'stack one can on top of the other'" in warning and "'put the can in the box'" in warning

    # An empty list is deployment.json's "not recorded", as in the settings the runtime reads.
    unrecorded = tmp_path / "unrecorded"
    unrecorded.mkdir()
    DeploymentConfig(action_rate_hz=10.0).save(unrecorded)
    assert trained_instructions(unrecorded) is None
    assert "does not say" in instruction_warning(unrecorded, "put the can in the box")

    # Legacy checkpoints kept only run settings in config.json, never instructions.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"model_type": "evo1", "action_rate_hz": 10.0}))
    with pytest.warns(UserWarning, match="--migrate"):
        assert trained_instructions(legacy) is None


def test_unreadable_deployment_settings_are_reported_not_trusted(tmp_path):
    """Settings the runtime would refuse are not half-read for their instructions."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "deployment.json").write_text(json.dumps({"instructions": ["put the can in the box"],
                                                        "noise_scale": 5.0}))
    with pytest.raises(DeploymentError, match="noise_scale"):
        trained_instructions(broken)
    warning = instruction_warning(broken, "put the can in the box")
    assert "cannot be read" in warning and "noise_scale" in warning
    (broken / "deployment.json").write_text("{not json")
    assert "not valid JSON" in instruction_warning(broken, "put the can in the box")
