"""Evo-1 model (tiny preset, CPU): masks, flow matching, determinism, checkpoints, stages."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from evo1_ros.model.build import build_model, xarm6_normalizer
from evo1_ros.model.checkpoint import load_checkpoint, save_checkpoint
from evo1_ros.model.config import Evo1Config, internvl3_1b_vlm
from evo1_ros.model.evo1 import Evo1, encode_observation
from evo1_ros.model.processor import Evo1Processor, Normalizer
from evo1_ros.train.stages import optimizer_groups, set_stage

ACTION_DIM = 7
H = 16  # evo1-tiny's chunk length


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_model("evo1-tiny", seed=0)
    return model.eval(), Evo1Processor(model.config, tokenizer, xarm6_normalizer())


def frames(seed, views=(True, True, True), size=(96, 128)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) if v else None for v in views]


def obs_for(proc, seed=0, views=(True, False, True), instruction="pick up the can"):
    state = np.linspace(-0.5, 0.5, ACTION_DIM)
    return proc.observation(frames(seed, views), state, instruction)


def sample(model, obs, mask, seed=0, **kw):
    return model.sample(obs, mask, generator=torch.Generator().manual_seed(seed), **kw)


def test_absent_view_pixels_change_nothing_present_ones_do(tiny):
    model, proc = tiny
    obs = obs_for(proc, views=(True, False, True))
    mask = proc.action_mask(ACTION_DIM)
    base = sample(model, obs, mask)
    poked = dict(obs, pixel_values=obs["pixel_values"].clone())
    poked["pixel_values"][:, 1] = torch.randn_like(poked["pixel_values"][:, 1]) * 3
    assert torch.equal(sample(model, poked, mask), base)
    poked["pixel_values"][:, 0] += 0.5  # a present view: the chunk must move
    assert not torch.allclose(sample(model, poked, mask), base)


def test_dropping_absent_views_equals_the_masked_full_sequence(tiny):
    """Our encoder skips absent views; LeRobot runs them and masks their tokens. Same z."""
    model, proc = tiny
    obs = obs_for(proc, views=(True, False, True))
    layout = model.layout(obs)
    z, z_mask = encode_observation(model.vlm, obs["pixel_values"], obs["input_ids"], layout), layout.z_mask
    ids = obs["input_ids"]
    is_image = ids == model.config.vlm["image_token_id"]
    slot = (is_image.cumsum(1) - 1) // model.config.tokens_per_view
    attention = obs["attention_mask"].clone()
    attention[is_image & (slot == 1)] = 0
    with torch.no_grad():
        out = model.vlm(
            input_ids=ids, pixel_values=obs["pixel_values"][0], attention_mask=attention, output_hidden_states=True
        )
    # LeRobot reads hidden_states[-1]: it must be the post-norm output we use.
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    full = out.last_hidden_state[attention.bool()]
    assert z_mask.sum() == attention.sum()
    torch.testing.assert_close(z[z_mask], full, atol=1e-5, rtol=1e-5)


def test_a_prompt_whose_image_slots_do_not_match_the_views_is_refused(tiny):
    model, proc = tiny
    obs = obs_for(proc, views=(True, False, True))
    ids = obs["input_ids"].clone()
    ids[ids == model.config.vlm["image_token_id"]] = 0  # the placeholders are gone
    with pytest.raises(ValueError, match="prompts and view masks do not match"):
        model.layout(dict(obs, input_ids=ids))


def test_masked_action_dims_are_zero_and_ignore_their_noise(tiny):
    model, proc = tiny
    obs = obs_for(proc)
    mask = proc.action_mask(ACTION_DIM)
    noise = torch.rand(1, H, 24) * 2 - 1
    a = model.sample(obs, mask, noise=noise)
    assert a.shape == (1, H, 24)
    assert torch.all(a[..., ACTION_DIM:] == 0)
    other = noise.clone()
    other[..., ACTION_DIM:] = torch.rand(1, H, 24 - ACTION_DIM) * 2 - 1
    assert torch.equal(model.sample(obs, mask, noise=other), a)
    assert not torch.allclose(model.sample(obs, mask, noise=noise * 0.5), a)


def batch_of(proc, n, seed=0):
    observations = [obs_for(proc, seed=seed + i, views=(True, True, False), instruction=f"put can {i} in the box")
                    for i in range(n)]
    ids, attention = proc.tokenize([f"put can {i} in the box" for i in range(n)])
    obs = {
        "pixel_values": torch.cat([o["pixel_values"] for o in observations]),
        "view_mask": torch.cat([o["view_mask"] for o in observations]),
        "input_ids": ids,
        "attention_mask": attention,
        "state": torch.cat([o["state"] for o in observations]),
    }
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(n, H, 24, generator=g) * 2 - 1
    mask = torch.zeros(n, H, 24, dtype=torch.bool)
    mask[..., :ACTION_DIM] = True
    return obs, actions, mask


def test_masked_action_dims_get_zero_gradient(tiny):
    model, proc = tiny
    model = Evo1(model.config).train()
    obs, actions, mask = batch_of(proc, 2)
    mask[1, 12:] = False  # steps past the episode end are padding too
    model.loss(obs, actions, mask, generator=torch.Generator().manual_seed(0)).backward()
    rows = model.head.out_fc2.weight.grad.view(H, 24, -1)  # one output row per (step, dim)
    assert torch.all(rows[:, ACTION_DIM:] == 0)
    assert rows[:, :ACTION_DIM].abs().sum() > 0
    # Garbage in masked dims of the targets changes nothing either.
    model.zero_grad()
    loss_a = model.loss(obs, actions, mask, generator=torch.Generator().manual_seed(1))
    actions2 = actions.clone()
    actions2[~mask] = 123.0
    loss_b = model.loss(obs, actions2, mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loss_a, loss_b)


def test_overfitting_four_samples_drops_the_loss_twentyfold(tiny):
    """A fixed batch (its tau and noise draws included) must be memorised."""
    _, proc = tiny
    torch.manual_seed(0)
    model = Evo1(proc.cfg).train()
    set_stage(model, 1)
    obs, actions, mask = batch_of(proc, 4)

    def batch_loss():
        return model.loss(obs, actions, mask, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        start = float(batch_loss())
    opt = torch.optim.AdamW(optimizer_groups(model, 0.0), lr=2e-3)
    for _ in range(60):
        opt.zero_grad()
        batch_loss().backward()
        opt.step()
    with torch.no_grad():
        end = float(batch_loss())
    assert end < start / 20, (start, end)


def test_sampling_is_deterministic_and_survives_save_load(tiny, tmp_path):
    model, proc = tiny
    obs = obs_for(proc)
    mask = proc.action_mask(ACTION_DIM)
    a = sample(model, obs, mask, seed=7)
    assert torch.equal(sample(model, obs, mask, seed=7), a)
    assert not torch.equal(sample(model, obs, mask, seed=8), a)
    save_checkpoint(tmp_path / "ck", model, proc.tokenizer, proc.normalizer)
    loaded, loaded_proc = load_checkpoint(tmp_path / "ck")
    obs2 = obs_for(loaded_proc)
    assert torch.equal(obs2["input_ids"], obs["input_ids"])
    assert torch.equal(sample(loaded, obs2, mask, seed=7), a)
    assert loaded_proc.normalizer.to_json() == proc.normalizer.to_json()


def test_stage_one_freezes_the_vlm_stage_two_trains_it(tiny):
    _, proc = tiny
    obs, actions, mask = batch_of(proc, 2)
    for stage, vlm_moves in ((1, False), (2, True)):
        torch.manual_seed(0)
        model = Evo1(proc.cfg).train()
        set_stage(model, stage)
        vlm_before = {k: v.clone() for k, v in model.vlm.state_dict().items()}
        head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
        opt = torch.optim.AdamW(optimizer_groups(model, 1e-3), lr=1e-3)
        model.loss(obs, actions, mask).backward()
        opt.step()
        vlm_changed = [k for k, v in model.vlm.state_dict().items() if not torch.equal(v, vlm_before[k])]
        head_changed = [k for k, v in model.head.state_dict().items() if not torch.equal(v, head_before[k])]
        assert head_changed
        if vlm_moves:
            assert any("vision_tower" in k for k in vlm_changed) and any("language_model" in k for k in vlm_changed)
        else:
            assert vlm_changed == []


def test_optimizer_groups_do_not_decay_biases_or_norms(tiny):
    model, _ = tiny
    set_stage(model, 2)
    decay, no_decay = optimizer_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert "head.blocks.0.norm1.weight" in no_decay_names and "head.blocks.0.fc1.bias" in no_decay_names
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_parameter_count_matches_lerobot_with_its_shapes():
    """LeRobot 0.6.1's Evo1Policy with the probe's InternVL3-1B shapes has 775,124,912
    parameters; that probe leaves the ViT's qkv bias off, which the real InternVL3-1B has."""
    vlm = internvl3_1b_vlm()
    vlm["vision_config"]["attention_bias"] = False
    with torch.device("meta"):
        assert sum(p.numel() for p in Evo1(Evo1Config(vlm=vlm)).parameters()) == 775_124_912
        real = sum(p.numel() for p in Evo1(Evo1Config()).parameters())
    assert real == 775_124_912 + 24 * 3 * 1024


def test_info_prints_the_preset_parameter_count():
    out = subprocess.run(
        [sys.executable, "-m", "evo1_ros.cli", "info", "--preset", "evo1-0.77b"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "775,198,640" in out and "language model (14 layers)" in out


def test_bounds_normalisation_round_trips_and_clips():
    norm = Normalizer("arm", "bounds", {"observation.state": {"min": [0, -1], "max": [2, 1]},
                                        "action": {"min": [0, -1], "max": [2, 1]}})
    x = np.array([0.5, 0.25])
    np.testing.assert_allclose(norm.denormalize("action", norm.normalize("action", x)), x, atol=1e-7)
    np.testing.assert_allclose(norm.normalize("observation.state", [5.0, -3.0]), [1.0, -1.0])
    with pytest.raises(ValueError, match="lack"):
        Normalizer("arm", "mean_std", {"observation.state": {"min": [0]}, "action": {"min": [0]}})


def test_processor_rejects_bad_inputs(tiny):
    _, proc = tiny
    with pytest.raises(ValueError, match="uint8"):
        proc.observation([np.zeros((8, 8, 3), np.float32)], np.zeros(ACTION_DIM), "x")
    with pytest.raises(ValueError, match="at least one image"):
        proc.observation([None, None], np.zeros(ACTION_DIM), "x")
    with pytest.raises(ValueError, match="non-finite"):
        proc.observation(frames(0), np.full(ACTION_DIM, np.nan), "x")
    with pytest.raises(ValueError, match="at most 3"):
        proc.observation(frames(0) + frames(1), np.zeros(ACTION_DIM), "x")
