"""Importers, on state dicts with the foreign projects' real key names and shapes.

`fixtures/foreign_checkpoints.json` lists every key and shape, at evo1-tiny's sizes, of LeRobot
0.6.1's `Evo1Policy` (what its `save_pretrained` writes) and of the reference release's `EVO1` module
(its DeepSpeed "module"), generated from their own code by `fixtures/make_foreign_fixtures.py`;
`fixtures/lerobot_evo1_processor/` holds the processor files LeRobot saves beside an Evo-1 policy
and what its pre/post-processors made of sample inputs. Values here are random (except the fixed
sinusoidal tables, which the importers check); names and shapes are theirs, not our maps inverted.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evo1_ros import cli
from evo1_ros.model.build import build_model, xarm6_normalizer
from evo1_ros.model.checkpoint import CheckpointError, import_lerobot, import_reference, load_internvl_backbone
from evo1_ros.model.config import Evo1Config
from evo1_ros.model.evo1 import Evo1, sinusoidal_table
from evo1_ros.model.tokenizer import build_tiny_tokenizer
from evo1_ros.runtime.deployment import load_deployment

FIXTURES = Path(__file__).parent / "fixtures"
FOREIGN = json.loads((FIXTURES / "foreign_checkpoints.json").read_text())
PROCESSOR = FIXTURES / "lerobot_evo1_processor"
HEAD = FOREIGN["head"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer().save_pretrained(str(path))
    return path


def config() -> Evo1Config:
    """Our config at the fixture's sizes."""
    return Evo1Config(vlm=FOREIGN["vlm"], chunk_length=HEAD["chunk_size"], head_width=HEAD["embed_dim"],
                      head_heads=HEAD["num_heads"], head_blocks=HEAD["num_layers"], head_hidden=HEAD["hidden_dim"],
                      state_hidden=HEAD["state_hidden_dim"], max_text_length=256)


def foreign_state(kind: str, seed: int = 0) -> dict:
    """Random tensors under `kind`'s real key names and shapes; the position/time tables they keep as
    buffers hold the fixed sinusoidal values (as theirs do)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in FOREIGN[kind]["keys"].items():
        if key.endswith(".pe"):
            state[key] = sinusoidal_table(shape[1], shape[2]).reshape(shape)
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


def write_reference(path: Path, mutate=None) -> Path:
    path.mkdir()
    state = foreign_state("reference")
    if mutate:
        mutate(state)
    torch.save({"module": state, "global_steps": 100}, path / "mp_rank_00_model_states.pt")
    (path / "config.json").write_text(json.dumps({"num_inference_timesteps": 32, "num_heads": HEAD["num_heads"]}))
    xarm6_normalizer().save(path / "norm_stats.json")
    return path


def write_lerobot(path: Path, mutate=None, processor: str | None = "min_max") -> Path:
    path.mkdir()
    state = foreign_state("lerobot")
    if mutate:
        mutate(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(FOREIGN["lerobot"]["config"]))
    if processor:
        for file in (PROCESSOR / processor).glob("policy_*"):
            shutil.copy(file, path / file.name)
    return path


def test_reference_release_imports_every_weight_to_its_place(tmp_path, tok_dir):
    path = write_reference(tmp_path / "ref")
    source = foreign_state("reference")
    model, processor = import_reference(path, tok_dir, vlm=FOREIGN["vlm"])
    ours = model.state_dict()
    # A packed ViT q/k/v splits in three; the LM and projector move; the head's packed attention splits.
    qkv = source["embedder.model.vision_model.encoder.layers.1.attn.qkv.weight"]
    for i, proj in enumerate("qkv"):
        assert torch.equal(ours[f"vlm.vision_tower.encoder.layer.1.attention.{proj}_proj.weight"], qkv.chunk(3)[i])
    assert torch.equal(ours["vlm.language_model.layers.1.mlp.up_proj.weight"],
                       source["embedder.model.language_model.model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(ours["vlm.multi_modal_projector.linear_2.weight"], source["embedder.model.mlp1.3.weight"])
    assert torch.equal(ours["vlm.vision_tower.embeddings.cls_token"],
                       source["embedder.model.vision_model.embeddings.class_embedding"])
    in_proj = source["action_head.transformer_blocks.2.attn.in_proj_weight"]
    assert torch.equal(ours["head.blocks.2.attn.v_proj.weight"], in_proj.chunk(3)[2])
    assert torch.equal(ours["head.out_fc2.weight"], source["action_head.mlp_head.fc2.linear.weight"])
    # Every one of our parameters came from the file (the load is strict), with the reference's padding.
    assert model.config.context_padding == "reference" and model.config.state_pad_value == -1.0
    assert model.config.chunk_length == HEAD["chunk_size"] and processor.normalizer.action_dim == 7


def test_lerobot_policy_imports_every_weight_to_its_place(tmp_path, tok_dir):
    path = write_lerobot(tmp_path / "lr")
    source = foreign_state("lerobot")
    model, _ = import_lerobot(path, tok_dir, vlm=FOREIGN["vlm"])
    ours = model.state_dict()
    for key in ("vision_tower.encoder.layer.0.attention.k_proj.weight", "language_model.norm.weight",
                "multi_modal_projector.layer_norm.bias"):
        assert torch.equal(ours["vlm." + key], source["model.embedder.model." + key])
    assert torch.equal(ours["head.state_encoder.fc1.weight"],
                       source["model.action_head.state_encoder.fc1.linear.weight"])
    assert torch.equal(ours["head.pool.weight"], source["model.action_head.seq_pool_proj.weight"])
    # The head count cannot be read off weight shapes; it comes from LeRobot's config.json.
    assert model.config.head_heads == HEAD["num_heads"] and model.config.context_padding == "mask"


@pytest.mark.parametrize("case", ["min_max", "mean_std"])
def test_lerobot_statistics_normalise_as_lerobots_preprocessor_does(tmp_path, tok_dir, case):
    """The normalised state our processor builds equals LeRobot's preprocessor output for the same raw
    state (padded dims included), and de-normalised chunks equal its postprocessor's."""
    _, processor = import_lerobot(write_lerobot(tmp_path / "lr", processor=case), tok_dir, vlm=FOREIGN["vlm"])
    io = json.loads((PROCESSOR / "io.json").read_text())
    expected = io["cases"][case]
    assert processor.normalizer.mode_of("observation.state") == case
    for raw, theirs in zip(io["raw_state"], expected["preprocessed_state"]):
        np.testing.assert_allclose(processor.state_vector(np.array(raw))[0].numpy(), theirs, atol=2e-6)
    for chunk, theirs in zip(io["normalised_chunk"], expected["postprocessed_chunk"]):
        np.testing.assert_allclose(processor.actions_to_robot(torch.tensor(chunk), 7), theirs, atol=2e-6)


def test_lerobot_policy_without_its_statistics_fails_naming_them(tmp_path, tok_dir):
    with pytest.raises(CheckpointError, match="policy_preprocessor.json is missing"):
        import_lerobot(write_lerobot(tmp_path / "bare", processor=None), tok_dir, vlm=FOREIGN["vlm"])
    path = write_lerobot(tmp_path / "nostate")
    (path / "policy_postprocessor_step_0_unnormalizer_processor.safetensors").unlink()
    with pytest.raises(CheckpointError, match="unnormalizer_processor.safetensors' is missing"):
        import_lerobot(path, tok_dir, vlm=FOREIGN["vlm"])
    path = write_lerobot(tmp_path / "nomin")
    file = path / "policy_preprocessor_step_4_normalizer_processor.safetensors"
    from safetensors.torch import load_file

    save_file({k: v for k, v in load_file(str(file)).items() if k != "observation.state.min"}, str(file))
    with pytest.raises(CheckpointError, match=re.escape("lacks ['observation.state.min']")):
        import_lerobot(path, tok_dir, vlm=FOREIGN["vlm"])


def test_lerobot_pooled_token_heads_are_refused(tmp_path, tok_dir):
    """return_cls_only feeds the head one pooled token: loading it would compute garbage."""
    path = write_lerobot(tmp_path / "lr")
    cfg = json.loads((path / "config.json").read_text())
    cfg["return_cls_only"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="return_cls_only"):
        import_lerobot(path, tok_dir, vlm=FOREIGN["vlm"])


def test_packed_attention_computes_what_nn_multiheadattention_computes():
    """LeRobot and the reference use nn.MultiheadAttention; its own state dict, through the importer's
    head conversion, must give our attention the same function."""
    from evo1_ros.model.checkpoint import convert_head

    cfg = config()
    model = Evo1(cfg)
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(cfg.head_width, cfg.head_heads, batch_first=True)
    converted, unknown = convert_head({f"transformer_blocks.0.attn.{k}": v for k, v in mha.state_dict().items()},
                                      cfg, "mha")
    assert unknown == []
    model.load_state_dict(converted, strict=False)
    x, ctx = torch.randn(2, 16, cfg.head_width), torch.randn(2, 30, cfg.head_width)
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[1, 20:] = True  # True = ignore, nn.MultiheadAttention's convention
    attn = model.head.blocks[0].attn
    with torch.no_grad():
        theirs, _ = mha(x, ctx, ctx, key_padding_mask=pad)
        ours = attn(x, *attn.keys_values(ctx), ~pad)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def drop(key):
    return lambda state: state.pop(key)


def reshape(key):
    return lambda state: state.__setitem__(key, torch.zeros(3, 3))


def add(key):
    return lambda state: state.__setitem__(key, torch.zeros(1))


@pytest.mark.parametrize(
    "mutate, named",
    [
        (drop("action_head.norm_out.weight"), "norm_out.weight"),
        (drop("embedder.model.vision_model.encoder.layers.0.attn.qkv.bias"), "attention.q_proj.bias"),
        (reshape("embedder.model.language_model.model.layers.1.mlp.up_proj.weight"), "layers.1.mlp.up_proj.weight"),
        (add("embedder.model.vision_model.encoder.layers.0.attn.rel_pos"), "attn.rel_pos"),
        (drop("action_head.transformer_blocks.1.attn.in_proj_weight"), "blocks.1.attn.q_proj.weight"),
    ],
)
def test_corrupted_reference_checkpoint_fails_naming_the_key(tmp_path, tok_dir, mutate, named):
    with pytest.raises(CheckpointError, match=re.escape(named)):
        import_reference(write_reference(tmp_path / "bad", mutate), tok_dir, vlm=FOREIGN["vlm"])


@pytest.mark.parametrize(
    "mutate, named",
    [
        (drop("model.action_head.mlp_head.fc1.linear.bias"), "head.out_fc1.bias"),
        (reshape("model.embedder.model.vision_tower.encoder.layer.0.mlp.fc1.weight"), "layer.0.mlp.fc1.weight"),
        (add("model.normalize_inputs.buffer"), "model.normalize_inputs.buffer"),
        (lambda s: s.__setitem__("model.action_head.time_pos_enc.pe", torch.ones(1, 1000, 128)), "time_pos_enc.pe"),
    ],
)
def test_corrupted_lerobot_checkpoint_fails_naming_the_key(tmp_path, tok_dir, mutate, named):
    with pytest.raises(CheckpointError, match=re.escape(named)):
        import_lerobot(write_lerobot(tmp_path / "bad", mutate), tok_dir, vlm=FOREIGN["vlm"])


def test_import_command_writes_the_reference_conventions_and_takes_overrides(tmp_path, tok_dir, monkeypatch, capsys):
    import evo1_ros.model.checkpoint as checkpoint

    path = write_reference(tmp_path / "ref")
    real = checkpoint.import_reference  # the CLI builds InternVL3-1B shapes; these weights are tiny
    monkeypatch.setattr(checkpoint, "import_reference", lambda src, tok: real(src, tok, vlm=FOREIGN["vlm"]))
    assert cli.main(["import", str(path), "--format", "reference", "--tokenizer", str(tok_dir),
                     "--out", str(tmp_path / "out")]) == 0
    settings = load_deployment(tmp_path / "out")
    conventions = settings.conventions
    assert [d.unit for d in conventions.state] == ["deg"] * 6 + ["sdk"] == [d.unit for d in conventions.action]
    assert not any(d.relative for d in conventions.action)
    assert (conventions.color_order, conventions.views) == ("rgb", ["base", "wrist"])
    assert "action rate unknown" in capsys.readouterr().out
    assert cli.main(["import", str(path), "--format", "reference", "--tokenizer", str(tok_dir),
                     "--out", str(tmp_path / "out2"), "--joint-unit", "rad", "--gripper-unit", "drive_joint",
                     "--actions", "relative", "--color-order", "bgr", "--views", "front,hand", "--action-rate", "15",
                     "--instructions", "put the can in the box"]) == 0
    settings = load_deployment(tmp_path / "out2")
    conventions = settings.conventions
    assert [d.unit for d in conventions.state] == ["rad"] * 6 + ["drive_joint"]
    assert [d.relative for d in conventions.action] == [True] * 6 + [False]
    assert (conventions.color_order, conventions.views, settings.action_rate_hz) == ("bgr", ["front", "hand"], 15.0)
    assert settings.instructions == ["put the can in the box"]
    # A broken source is a sentence and exit 1, not a traceback.
    assert cli.main(["import", str(tmp_path / "nothing"), "--format", "reference", "--tokenizer", str(tok_dir),
                     "--out", str(tmp_path / "out3")]) == 1
    assert "mp_rank_00_model_states.pt is missing" in capsys.readouterr().err


def test_lerobot_import_takes_its_views_from_the_image_features(tmp_path, tok_dir, monkeypatch):
    import evo1_ros.model.checkpoint as checkpoint

    real = checkpoint.import_lerobot
    monkeypatch.setattr(checkpoint, "import_lerobot", lambda src, tok: real(src, tok, vlm=FOREIGN["vlm"]))
    path = write_lerobot(tmp_path / "lr")
    assert cli.main(["import", str(path), "--format", "lerobot", "--tokenizer", str(tok_dir),
                     "--out", str(tmp_path / "out")]) == 0
    conventions = load_deployment(tmp_path / "out").conventions
    assert conventions.views == ["base", "wrist"] and conventions.is_ros


def internvl_hf_state(model: Evo1, extra_layers: int) -> dict:
    """InternVL3-1B-hf's layout: `model.`-prefixed VLM, a full-depth LM and an lm_head."""
    state = {"model." + k: v.clone() for k, v in model.vlm.state_dict().items()}
    depth = model.config.num_llm_layers
    for extra in range(depth, depth + extra_layers):
        for k, v in model.vlm.language_model.layers[0].state_dict().items():
            state[f"model.language_model.layers.{extra}.{k}"] = torch.randn_like(v)
    state["lm_head.weight"] = model.vlm.language_model.embed_tokens.weight.clone()
    return state


@pytest.fixture(scope="module")
def source():
    model, _ = build_model("evo1-tiny", seed=3)
    return model.eval()


def test_internvl_backbone_initialises_the_vlm_and_drops_deep_layers(source, tmp_path):
    model = source
    save_file(internvl_hf_state(model, extra_layers=3), str(tmp_path / "model.safetensors"))
    fresh = Evo1(model.config)
    load_internvl_backbone(fresh, tmp_path)
    for k, v in model.vlm.state_dict().items():
        assert torch.equal(fresh.vlm.state_dict()[k], v), k


def test_internvl_backbone_with_a_missing_layer_fails_naming_it(source, tmp_path):
    model = source
    state = internvl_hf_state(model, extra_layers=0)
    del state["model.language_model.layers.1.self_attn.o_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape("language_model.layers.1.self_attn.o_proj.weight")):
        load_internvl_backbone(Evo1(model.config), tmp_path)
