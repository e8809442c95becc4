"""`evo1-ros train` on CPU (evo1-tiny, a tiny synthetic dataset): the loss goes down, stop +
resume is bit-exact, the stages freeze what they should, augmentation, and input errors."""

import json

import numpy as np
import pytest
import torch

from evo1_ros import cli
from evo1_ros.data.convert import norm_stats, write_episode
from evo1_ros.robot.xarm6 import JOINT_STATE_NAMES as NAMES
from evo1_ros.model.build import build_model
from evo1_ros.model.checkpoint import load_checkpoint
from evo1_ros.model.processor import Evo1Processor
from evo1_ros.train.augment import augment
from evo1_ros.train.data import Collate, model_inputs, open_datasets

pytest.importorskip("cv2")  # frames are PNG-encoded by the data engineer's writer


def write_dataset(root, cameras=("base", "wrist"), episodes=2, length=12, size=28, names=NAMES):
    """An `evo1` dataset as `evo1-ros convert` writes it. Its actions hold a pattern a few steps
    can learn: every dim sits near its maximum and drops to 0 for the last two steps (a gripper
    closing), so normalised actions average well away from 0. The state trails the action and the
    base camera's colour follows the state."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    meta_episodes, states, actions = [], [], []
    for e in range(episodes):
        action = np.where(np.arange(length)[:, None] < length - 2, 1 + rng.normal(0, 0.02, (length, len(names))), 0)
        action = action.astype(np.float32)
        state = np.concatenate([action[:1], action[:-1]])
        frames = {cam: [np.full((size, size, 3), (int(120 + 200 * s[0]) % 256, 60 * c, 90), np.uint8)
                        for s in state] for c, cam in enumerate(cameras)}
        episode = {"state": state, "action": action, "timestamp": np.arange(length) / 15.0,
                   "intervention": np.zeros(length, bool), "frames": frames}
        write_episode(root / f"episode_{e:06d}.npz", episode, "png")
        meta_episodes.append({"file": f"episode_{e:06d}.npz", "instruction": "pick up the can",
                              "success": True, "length": length})
        states.append(state)
        actions.append(action)
    (root / "norm_stats.json").write_text(json.dumps(
        {"state": norm_stats(states), "action": norm_stats(actions), "count": episodes * length}))
    meta = {"format": "evo1", "version": 1, "fps": 15.0, "cameras": list(cameras), "image_size": [size, size],
            "codec": "png", "state_names": list(names), "action_names": list(names), "episodes": meta_episodes}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def train(data, out, *extra):
    argv = ["train", "--data", str(data), "--preset", "evo1-tiny", "--out", str(out), "--device", "cpu",
            "--batch-size", "4", "--lr", "1e-3", "--warmup", "2", "--num-workers", "0", *extra]
    return cli.main(argv)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def fixed_draw_loss(model, processor, data) -> float:
    """Loss on the first 8 samples, no augmentation, the same flow-matching draws every call."""
    dataset, processor.normalizer = open_datasets([data], model.config)
    batch = Collate(processor)([dataset[i] for i in range(8)])
    obs, actions, mask = model_inputs(batch, model.config, "cpu")
    with torch.no_grad():
        return float(np.mean([model.eval().loss(obs, actions, mask, generator=torch.Generator().manual_seed(s))
                              for s in range(4)]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def test_twenty_steps_lower_the_loss_and_stop_resume_is_bit_exact(data, tmp_path):
    common = ("--stage", "2", "--steps", "20", "--save-every", "10")
    assert train(data, tmp_path / "a", *common) == 0
    trained, processor = load_checkpoint(tmp_path / "a" / "stage2" / "final")
    fresh, _ = build_model("evo1-tiny", seed=0)
    before, after = fixed_draw_loss(fresh, processor, data), fixed_draw_loss(trained, processor, data)
    assert after < 0.8 * before, (before, after)

    # Interrupted at step 10 (a checkpoint, crossing an epoch boundary of 6 batches), resumed to 20.
    assert train(data, tmp_path / "b", *common, "--stop-after", "10") == 0
    assert not (tmp_path / "b" / "stage2" / "final").exists()
    assert train(data, tmp_path / "b", *common, "--resume") == 0
    resumed, _ = load_checkpoint(tmp_path / "b" / "stage2" / "final")
    expected = trained.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name

    logs = [[json.loads(line) for line in open(out / "stage2" / "train_log.jsonl")] for out in (tmp_path / "a", tmp_path / "b")]
    assert [r["step"] for r in logs[1]] == list(range(1, 21))
    assert [r["loss"] for r in logs[1]] == [r["loss"] for r in logs[0]]
    assert (tmp_path / "b" / "stage2" / "step-000010" / "trainer_state.pt").is_file()


def test_stage1_leaves_the_vlm_untouched_stage2_trains_it(data, tmp_path):
    assert train(data, tmp_path, "--stage", "both", "--stage1-steps", "2", "--steps", "2") == 0
    init = weights(build_model("evo1-tiny", seed=0)[0])
    stage1 = weights(load_checkpoint(tmp_path / "stage1" / "final")[0])
    stage2 = weights(load_checkpoint(tmp_path / "stage2" / "final")[0])
    vlm = [k for k in init if k.startswith("vlm.")]
    head = [k for k in init if k.startswith("head.")]
    assert all(torch.equal(stage1[k], init[k]) for k in vlm)
    assert not all(torch.equal(stage1[k], init[k]) for k in head)
    assert not all(torch.equal(stage2[k], stage1[k]) for k in vlm)
    # The dataset's statistics travel with the checkpoint.
    _, processor = load_checkpoint(tmp_path / "stage2" / "final")
    assert processor.normalizer.stats["action"]["min"] == json.loads((data / "norm_stats.json").read_text())["action"]["min"]


def test_existing_run_needs_resume(data, tmp_path):
    (tmp_path / "stage2").mkdir(parents=True)
    (tmp_path / "stage2" / "train_log.jsonl").write_text("")
    assert train(data, tmp_path, "--stage", "2", "--steps", "1") == 1


def test_augmentation_keeps_shape_and_dtype_is_seeded_and_identity_at_p0():
    images = torch.randint(0, 256, (2, 3, 3, 28, 28), dtype=torch.uint8)
    out = augment(images, p=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    assert torch.equal(out, augment(images, p=1.0, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(augment(images, p=0.0, generator=torch.Generator().manual_seed(0)), images)
    # p = 0.5 touches some images and leaves the others exactly as they were.
    half = augment(images, p=0.5, generator=torch.Generator().manual_seed(1)).flatten(0, 1)
    same = [torch.equal(a, b) for a, b in zip(half, images.flatten(0, 1))]
    assert any(same) and not all(same)


def test_random_shift_moves_the_view_within_its_bound_and_repeats_the_edges():
    from evo1_ros.train.augment import random_shift

    image = torch.zeros(64, 1, 3, 40, 40)
    image[..., 20] = 1.0  # one bright column
    shifted = random_shift(image.flatten(0, 1), 0.1, torch.Generator().manual_seed(0))
    columns = shifted[:, 0].mean(1).argmax(-1)  # where each image's bright column went
    moved = (columns - 20).abs()
    assert moved.max() <= 4 and moved.float().mean() > 1  # up to 10 % of 40 px, and it does move
    edge = torch.ones(4, 3, 40, 40)
    assert torch.allclose(random_shift(edge, 0.2, torch.Generator().manual_seed(1)), edge)  # no black borders
    images = torch.randint(0, 256, (2, 3, 3, 28, 28), dtype=torch.uint8)
    plain = augment(images, p=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, augment(images, p=1.0, generator=torch.Generator().manual_seed(0), shift=0.0))
    assert not torch.equal(plain, augment(images, p=1.0, generator=torch.Generator().manual_seed(0), shift=0.1))


def test_batches_map_cameras_to_slots_and_mask_the_rest(data):
    model, tokenizer = build_model("evo1-tiny", seed=0)
    dataset, normalizer = open_datasets([data], model.config)
    batch = Collate(Evo1Processor(model.config, tokenizer, normalizer))([dataset[i] for i in (0, 11)])
    assert batch["view_mask"].tolist() == [[True, True, False]] * 2
    assert not batch["images"][:, 2].any()
    mask = batch["action_mask"]
    assert mask[:, :, :7].any() and not mask[:, :, 7:].any()
    # Sample 11 is its episode's last step: only its first action step is real.
    assert mask[1, :, 0].tolist() == [True] + [False] * (model.config.chunk_length - 1)
    assert batch["actions"].abs().max() <= 1.0


@pytest.mark.parametrize("kind, message", [
    ("empty", "no samples"),
    ("cameras", "at most 3 views"),
    ("action_dim", "at most 24"),
    ("missing", "not an evo1 dataset"),
])
def test_bad_datasets_fail_clearly(tmp_path, capsys, kind, message):
    root = tmp_path / "ds"
    if kind == "empty":
        write_dataset(root, episodes=1)
        meta = json.loads((root / "meta.json").read_text())
        (root / "meta.json").write_text(json.dumps({**meta, "episodes": []}))
    elif kind == "cameras":
        write_dataset(root, cameras=("a", "b", "c", "d"), episodes=1, length=2)
    elif kind == "action_dim":
        write_dataset(root, episodes=1, length=2, names=[f"j{i}" for i in range(25)])
    assert train(root, tmp_path / "out", "--stage", "1", "--steps", "1") == 1
    assert message in capsys.readouterr().err


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradients(data, tmp_path):
    from evo1_ros.train.stages import set_gradient_checkpointing

    model, tokenizer = build_model("evo1-tiny", seed=0)
    processor = Evo1Processor(model.config, tokenizer, None)
    dataset, processor.normalizer = open_datasets([data], model.config)
    obs, actions, mask = model_inputs(Collate(processor)([dataset[i] for i in range(4)]), model.config, "cpu")
    # A module inside each checkpointed layer: it runs again when the backward pass recomputes the layer.
    layers = [model.head.blocks[0].fc1, model.vlm.vision_tower.encoder.layer[0].mlp,
              model.vlm.language_model.layers[0].mlp]

    def gradients(checkpointing: bool):
        set_gradient_checkpointing(model, checkpointing)
        calls = [0] * len(layers)

        def counted(i, forward):  # forward hooks do not fire when checkpointing recomputes
            def run(*args, **kwargs):
                calls[i] += 1
                return forward(*args, **kwargs)
            return run

        for i, layer in enumerate(layers):
            layer.forward = counted(i, type(layer).forward.__get__(layer))
        model.train().zero_grad()
        model.loss(obs, actions, mask, generator=torch.Generator().manual_seed(0)).backward()
        for layer in layers:
            del layer.forward
        return {n: p.grad.clone() for n, p in model.named_parameters()}, calls

    plain, plain_calls = gradients(False)
    recomputed, calls = gradients(True)
    assert plain_calls == [1, 1, 1] and calls == [2, 2, 2]  # each layer ran again in the backward pass
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # The command takes the option.
    assert train(data, tmp_path, "--stage", "2", "--steps", "2", "--gradient-checkpointing") == 0
    assert (tmp_path / "stage2" / "final").is_dir()
