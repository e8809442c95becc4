"""Importers: synthetic state dicts written with the foreign projects' own names and layouts.

The foreign names below are spelled out here, independently of the importers' maps: the
reference release (remote-code InternVL, DeepSpeed "module"), LeRobot's Evo1Policy
(transformers-native InternVL under model.embedder.model, action head under model.action_head)
and InternVL3-1B-hf itself.
"""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from evo1_ros.model.build import build_model, xarm6_normalizer
from evo1_ros.model.checkpoint import (
    CheckpointError,
    import_lerobot,
    import_reference,
    load_internvl_backbone,
)
from evo1_ros.model.evo1 import Evo1, sinusoidal_table


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    model, tokenizer = build_model("evo1-tiny", seed=3)
    tok_dir = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(str(tok_dir))
    return model.eval(), tok_dir


def foreign_head(model: Evo1) -> dict:
    """Our head written the way reference/LeRobot store theirs."""
    sd, out = model.head.state_dict(), {}
    out["state_encoder.fc1.linear.weight"] = sd["state_encoder.fc1.weight"]
    out["state_encoder.fc1.linear.bias"] = sd["state_encoder.fc1.bias"]
    out["state_encoder.fc2.linear.weight"] = sd["state_encoder.fc2.weight"]
    out["state_encoder.fc2.linear.bias"] = sd["state_encoder.fc2.bias"]
    for i in (1, 2, 3):
        out[f"action_encoder.W{i}.linear.weight"] = sd[f"action_encoder.fc{i}.weight"]
        out[f"action_encoder.W{i}.linear.bias"] = sd[f"action_encoder.fc{i}.bias"]
    for b in range(len(model.head.blocks)):
        p = f"blocks.{b}."
        q = f"transformer_blocks.{b}."
        for kind in ("weight", "bias"):
            out[q + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[p + f"attn.{n}_proj.{kind}"] for n in ("q", "k", "v")]
            )
            out[q + f"attn.out_proj.{kind}"] = sd[p + f"attn.out_proj.{kind}"]
            out[q + f"norm1.{kind}"] = sd[p + f"norm1.{kind}"]
            out[q + f"norm2.{kind}"] = sd[p + f"norm2.{kind}"]
            out[q + f"ff.0.{kind}"] = sd[p + f"fc1.{kind}"]
            out[q + f"ff.2.{kind}"] = sd[p + f"fc2.{kind}"]
    for kind in ("weight", "bias"):
        out[f"norm_out.{kind}"] = sd[f"norm_out.{kind}"]
        out[f"seq_pool_proj.{kind}"] = sd[f"pool.{kind}"]
        out[f"mlp_head.fc1.linear.{kind}"] = sd[f"out_fc1.{kind}"]
        out[f"mlp_head.fc2.linear.{kind}"] = sd[f"out_fc2.{kind}"]
    width, horizon = model.config.head_width, model.config.chunk_length
    out["time_pos_enc.pe"] = sinusoidal_table(1000, width).unsqueeze(0)
    out["action_encoder.pos_encoding.pe"] = sinusoidal_table(horizon, width).unsqueeze(0)
    return {k: v.clone() for k, v in out.items()}


def remote_code_vlm(model: Evo1) -> dict:
    """Our (transformers-native) VLM written with InternVL's remote-code names."""
    out = {}
    for key, value in model.vlm.state_dict().items():
        m = re.match(r"vision_tower\.encoder\.layer\.(\d+)\.(.*)", key)
        if m:
            layer, rest = m.groups()
            p = f"vision_model.encoder.layers.{layer}."
            if rest.startswith("attention.q_proj."):
                kind = rest.rsplit(".", 1)[1]
                a = f"vision_tower.encoder.layer.{layer}.attention."
                sd = model.vlm.state_dict()
                out[p + f"attn.qkv.{kind}"] = torch.cat([sd[a + f"{n}_proj.{kind}"] for n in "qkv"])
            elif rest.startswith(("attention.k_proj.", "attention.v_proj.")):
                continue
            else:
                rest = (rest.replace("attention.projection_layer.", "attn.proj.")
                        .replace("lambda_1", "ls1").replace("lambda_2", "ls2")
                        .replace("layernorm_before.", "norm1.").replace("layernorm_after.", "norm2."))
                out[p + rest] = value
            continue
        key = (key.replace("vision_tower.embeddings.cls_token", "vision_model.embeddings.class_embedding")
               .replace("vision_tower.embeddings.position_embeddings", "vision_model.embeddings.position_embedding")
               .replace("vision_tower.embeddings.patch_embeddings.projection.", "vision_model.embeddings.patch_embedding.")
               .replace("multi_modal_projector.layer_norm.", "mlp1.0.")
               .replace("multi_modal_projector.linear_1.", "mlp1.1.")
               .replace("multi_modal_projector.linear_2.", "mlp1.3.")
               .replace("language_model.", "language_model.model."))
        out[key] = value
    out["language_model.lm_head.weight"] = model.vlm.language_model.embed_tokens.weight
    return {k: v.clone() for k, v in out.items()}


def write_reference(path, model, mutate=None):
    path.mkdir()
    state = {"embedder.model." + k: v for k, v in remote_code_vlm(model).items()}
    state.update({"action_head." + k: v for k, v in foreign_head(model).items()})
    if mutate:
        mutate(state)
    torch.save({"module": state, "global_steps": 100}, path / "mp_rank_00_model_states.pt")
    (path / "config.json").write_text(
        json.dumps({"num_inference_timesteps": 32, "horizon": 16, "num_heads": model.config.head_heads})
    )
    xarm6_normalizer().save(path / "norm_stats.json")
    return path


def write_lerobot(path, model, mutate=None):
    path.mkdir()
    state = {"model.embedder.model." + k: v for k, v in model.vlm.state_dict().items()}
    state.update({"model.action_head." + k: v for k, v in foreign_head(model).items()})
    if mutate:
        mutate(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    cfg = {"type": "evo1", "chunk_size": 16, "max_state_dim": 24, "max_action_dim": 24, "max_views": 3,
           "vlm_num_layers": model.config.num_llm_layers, "num_inference_timesteps": 32, "num_categories": 1,
           "num_heads": model.config.head_heads, "image_resolution": model.config.vlm["vision_config"]["image_size"],
           "max_text_length": model.config.max_text_length}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def assert_same_weights(a: Evo1, b: Evo1):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert different == []


def test_reference_checkpoint_imports_every_weight(source, tmp_path):
    model, tok_dir = source
    imported, processor = import_reference(write_reference(tmp_path / "ref", model), tok_dir, vlm=model.config.vlm)
    assert_same_weights(model, imported)
    # Reference checkpoints were trained seeing zero rows for padding and -1 in padded state dims.
    assert imported.config.context_padding == "reference" and imported.config.state_pad_value == -1.0
    assert processor.normalizer.action_dim == 7


def test_lerobot_checkpoint_imports_every_weight(source, tmp_path):
    model, tok_dir = source
    imported, _ = import_lerobot(write_lerobot(tmp_path / "lr", model), tok_dir, vlm=model.config.vlm)
    assert_same_weights(model, imported)
    assert imported.config.context_padding == "mask"
    # The head count cannot be read off weight shapes; it must come from LeRobot's config.json.
    assert imported.config.head_heads == model.config.head_heads  # 4 in evo1-tiny, not the default 8


def test_lerobot_pooled_token_heads_are_refused(source, tmp_path):
    """return_cls_only feeds the head one pooled token: loading it would compute garbage."""
    model, tok_dir = source
    path = write_lerobot(tmp_path / "lr", model)
    cfg = json.loads((path / "config.json").read_text())
    cfg["return_cls_only"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="return_cls_only"):
        import_lerobot(path, tok_dir, vlm=model.config.vlm)


def test_packed_attention_computes_what_nn_multiheadattention_computes(source):
    """LeRobot and the reference use nn.MultiheadAttention; our split q/k/v must agree with it."""
    model, _ = source
    head = foreign_head(model)
    width, heads = model.config.head_width, model.config.head_heads
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    mha.load_state_dict({
        "in_proj_weight": head["transformer_blocks.0.attn.in_proj_weight"],
        "in_proj_bias": head["transformer_blocks.0.attn.in_proj_bias"],
        "out_proj.weight": head["transformer_blocks.0.attn.out_proj.weight"],
        "out_proj.bias": head["transformer_blocks.0.attn.out_proj.bias"],
    })
    x, ctx = torch.randn(2, 16, width), torch.randn(2, 30, width)
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
def test_corrupted_reference_checkpoint_fails_naming_the_key(source, tmp_path, mutate, named):
    model, tok_dir = source
    with pytest.raises(CheckpointError, match=re.escape(named)):
        import_reference(write_reference(tmp_path / "bad", model, mutate), tok_dir, vlm=model.config.vlm)


@pytest.mark.parametrize(
    "mutate, named",
    [
        (drop("model.action_head.mlp_head.fc1.linear.bias"), "head.out_fc1.bias"),
        (reshape("model.embedder.model.vision_tower.encoder.layer.0.mlp.fc1.weight"), "layer.0.mlp.fc1.weight"),
        (add("model.normalize_inputs.buffer"), "model.normalize_inputs.buffer"),
        (lambda s: s.__setitem__("model.action_head.time_pos_enc.pe", torch.ones(1, 1000, 128)), "time_pos_enc.pe"),
    ],
)
def test_corrupted_lerobot_checkpoint_fails_naming_the_key(source, tmp_path, mutate, named):
    model, tok_dir = source
    with pytest.raises(CheckpointError, match=re.escape(named)):
        import_lerobot(write_lerobot(tmp_path / "bad", model, mutate), tok_dir, vlm=model.config.vlm)


def internvl_hf_state(model: Evo1, extra_layers: int) -> dict:
    """InternVL3-1B-hf's layout: `model.`-prefixed VLM, a full-depth LM and an lm_head."""
    state = {"model." + k: v.clone() for k, v in model.vlm.state_dict().items()}
    depth = model.config.num_llm_layers
    for extra in range(depth, depth + extra_layers):
        for k, v in model.vlm.language_model.layers[0].state_dict().items():
            state[f"model.language_model.layers.{extra}.{k}"] = torch.randn_like(v)
    state["lm_head.weight"] = model.vlm.language_model.embed_tokens.weight.clone()
    return state


def test_internvl_backbone_initialises_the_vlm_and_drops_deep_layers(source, tmp_path):
    model, _ = source
    save_file(internvl_hf_state(model, extra_layers=3), str(tmp_path / "model.safetensors"))
    fresh = Evo1(model.config)
    load_internvl_backbone(fresh, tmp_path)
    for k, v in model.vlm.state_dict().items():
        assert torch.equal(fresh.vlm.state_dict()[k], v), k


def test_internvl_backbone_with_a_missing_layer_fails_naming_it(source, tmp_path):
    model, _ = source
    state = internvl_hf_state(model, extra_layers=0)
    del state["model.language_model.layers.1.self_attn.o_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape("language_model.layers.1.self_attn.o_proj.weight")):
        load_internvl_backbone(Evo1(model.config), tmp_path)
