"""Checkpoints: our format, and importers for the Evo-1 weights that exist in the wild.

Our format is a directory: `config.json` (Evo1Config), `model.safetensors`, `norm_stats.json`
and the tokenizer files in `tokenizer/` (apart, so transformers never mistakes our config.json
for the tokenizer's model config). Importers translate foreign names through explicit maps; any key that
is missing, unexpected or mis-shaped after translation is an error that names it — a partial
load never happens silently.

(b) `load_internvl_backbone`: a local InternVL3-1B-hf directory initialises the VLM.
(c) `import_reference`: the reference release (DeepSpeed `mp_rank_00_model_states.pt`, weights
    under "module", remote-code InternVL names, `config.json`, `norm_stats.json`).
(d) `import_lerobot`: a LeRobot Evo-1 policy directory (`config.json` + `model.safetensors` + the
    processor files holding its normalisation statistics).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .config import Evo1Config, internvl3_1b_vlm
from .evo1 import TIME_TABLE_ROWS, Evo1, sinusoidal_table
from .processor import MODES, Evo1Processor, Normalizer
from .tokenizer import load_tokenizer

CONFIG, WEIGHTS, NORM_STATS, TOKENIZER = "config.json", "model.safetensors", "norm_stats.json", "tokenizer"


class CheckpointError(ValueError):
    pass


def _names(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(module: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load every parameter/buffer of `module` from `state_dict` or raise naming what is wrong."""
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = [
        f"{k} (model {tuple(expected[k].shape)}, checkpoint {tuple(state_dict[k].shape)})"
        for k in set(expected) & set(state_dict)
        if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"mis-shaped keys: {_names(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


# --- our format ------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: Evo1, tokenizer, normalizer: Normalizer | None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path / CONFIG)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(path / WEIGHTS), metadata={"format": "pt", "model_type": "evo1"})
    if normalizer is not None:
        normalizer.save(path / NORM_STATS)
    tokenizer.save_pretrained(str(path / TOKENIZER))
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Evo1, Evo1Processor]:
    """Model (eval mode) and processor from one of our checkpoint directories."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not an evo1_ros checkpoint: {name} is missing")
    cfg = Evo1Config.load(path / CONFIG)
    model = Evo1(cfg)
    load_strict(model, load_file(str(path / WEIGHTS)), str(path / WEIGHTS))
    normalizer = Normalizer.load(path / NORM_STATS) if (path / NORM_STATS).is_file() else None
    processor = Evo1Processor(cfg, load_tokenizer(path / TOKENIZER), normalizer)
    return model.to(device=device, dtype=dtype).eval(), processor


# --- foreign names ---------------------------------------------------------------------------

# Action head: reference and LeRobot share names (CategorySpecificLinear wraps nn.Linear in
# `.linear`; attention is nn.MultiheadAttention with packed q/k/v).
_HEAD_RENAMES = [
    (r"state_encoder\.fc(\d)\.linear\.", r"state_encoder.fc\1."),
    (r"action_encoder\.W(\d)\.linear\.", r"action_encoder.fc\1."),
    (r"transformer_blocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.out_proj."),
    (r"transformer_blocks\.(\d+)\.norm(\d)\.", r"blocks.\1.norm\2."),
    (r"transformer_blocks\.(\d+)\.ff\.0\.", r"blocks.\1.fc1."),
    (r"transformer_blocks\.(\d+)\.ff\.2\.", r"blocks.\1.fc2."),
    (r"norm_out\.", r"norm_out."),
    (r"seq_pool_proj\.", r"pool."),
    (r"mlp_head\.fc1\.linear\.", r"out_fc1."),
    (r"mlp_head\.fc2\.linear\.", r"out_fc2."),
]
_PACKED_QKV = re.compile(r"transformer_blocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
# Fixed sinusoidal tables the foreign heads keep as buffers: checked against ours, not loaded.
_FIXED_TABLES = {"time_pos_enc.pe": "time", "action_encoder.pos_encoding.pe": "position"}

# Remote-code InternVL (reference) -> transformers-native InternVL.
_REMOTE_VLM_RENAMES = [
    (r"vision_model\.embeddings\.class_embedding$", "vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding$", "vision_tower.embeddings.position_embeddings"),
    (r"vision_model\.embeddings\.patch_embedding\.", "vision_tower.embeddings.patch_embeddings.projection."),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.", r"vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.", r"vision_tower.encoder.layer.\1.attention.\2."),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls(\d)$", r"vision_tower.encoder.layer.\1.lambda_\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"vision_tower.encoder.layer.\1.layernorm_before."),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"vision_tower.encoder.layer.\1.layernorm_after."),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"vision_tower.encoder.layer.\1.mlp."),
    (r"mlp1\.0\.", "multi_modal_projector.layer_norm."),
    (r"mlp1\.1\.", "multi_modal_projector.linear_1."),
    (r"mlp1\.3\.", "multi_modal_projector.linear_2."),
    (r"language_model\.model\.", "language_model."),
]
_REMOTE_QKV = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_UNUSED_LM_HEAD = re.compile(r"(^|\.)lm_head\.weight$")  # the LM's output head: Evo-1 never uses it


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _check_fixed_table(name: str, value: torch.Tensor, cfg: Evo1Config, source: str) -> None:
    rows = TIME_TABLE_ROWS if _FIXED_TABLES[name] == "time" else cfg.chunk_length
    ours = sinusoidal_table(rows, cfg.head_width)
    theirs = value.float().reshape(-1, value.shape[-1])[:rows]
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-3):
        raise CheckpointError(f"{source}: buffer {name} is not the fixed sinusoidal table this model uses")


def _convert(foreign: dict, prefix: str, renames, packed: re.Pattern, packed_name: str, skip) -> tuple[dict, list[str]]:
    """Foreign weights -> ours under `prefix` through `renames`. A packed q/k/v tensor (matched by
    `packed`, groups: index, weight|bias) is split in three named by `packed_name`; `skip(key,
    value)` is True for keys dropped on purpose. Returns (converted, foreign keys no rule knows)."""
    out, unknown = {}, []
    for key, value in foreign.items():
        if skip(key, value):
            continue
        match = packed.match(key)
        if match:
            index, kind = match.groups()
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[prefix + packed_name.format(index=index, proj=proj, kind=kind)] = part.clone()
            continue
        new = _rename(key, renames)
        if new is None:
            unknown.append(key)
        else:
            out[prefix + new] = value
    return out, unknown


def convert_head(foreign: dict, cfg: Evo1Config, source: str) -> tuple[dict, list[str]]:
    """Foreign action-head weights (names relative to the head) -> ours under `head.`."""

    def fixed_table(key, value) -> bool:
        if key not in _FIXED_TABLES:
            return False
        _check_fixed_table(key, value, cfg, source)
        return True

    return _convert(foreign, "head.", _HEAD_RENAMES, _PACKED_QKV, "blocks.{index}.attn.{proj}.{kind}", fixed_table)


def convert_remote_vlm(foreign: dict) -> tuple[dict, list[str]]:
    """Remote-code InternVL weights (relative to the InternVL model) -> ours under `vlm.`."""
    return _convert(foreign, "vlm.", _REMOTE_VLM_RENAMES, _REMOTE_QKV,
                    "vision_tower.encoder.layer.{index}.attention.{proj}.{kind}",
                    lambda key, _: bool(_UNUSED_LM_HEAD.search(key)))


def _split_prefix(state_dict: dict, marker: str, source: str) -> str:
    """The prefix in front of the key suffix `marker` (e.g. 'embedder.model.'), from the keys."""
    for key in state_dict:
        if key.endswith(marker):
            return key[: -len(marker)]
    raise CheckpointError(f"{source}: no key contains {marker!r}; is this the right checkpoint kind?")


def _strip(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _finish_import(cfg: Evo1Config, converted: dict, unknown: list[str], source: str) -> Evo1:
    if unknown:
        raise CheckpointError(f"{source}: keys no import rule knows: {_names(unknown)}")
    model = Evo1(cfg)
    load_strict(model, converted, source)
    return model.eval()


def _head_shapes(head: dict, source: str) -> dict:
    """Evo1Config fields read off the foreign head's weights (robust to config.json drift)."""
    if any(k.startswith("mlp_head.fc1.") and ".linear." not in k for k in head):
        raise CheckpointError(f"{source}: multi-embodiment heads (num_categories > 1) are not supported")
    try:
        width = head["norm_out.weight"].shape[0]
        horizon = head["seq_pool_proj.weight"].shape[1] // width
        return {
            "head_width": width,
            "chunk_length": horizon,
            "max_action_dim": head["mlp_head.fc2.linear.weight"].shape[0] // horizon,
            "max_state_dim": head["state_encoder.fc1.linear.weight"].shape[1],
            "state_hidden": head["state_encoder.fc1.linear.weight"].shape[0],
            "head_hidden": head["mlp_head.fc1.linear.weight"].shape[0],
            "head_blocks": len({k.split(".")[1] for k in head if k.startswith("transformer_blocks.")}),
        }
    except KeyError as e:
        raise CheckpointError(f"{source}: action head lacks {e.args[0]}") from e


def import_reference(
    path: str | Path, tokenizer_dir: str | Path, vlm: dict | None = None
) -> tuple[Evo1, Evo1Processor]:
    """(c) A reference Evo-1 release directory. The tokenizer comes from a local InternVL3-1B-hf
    directory (the release has none)."""
    path = Path(path)
    weights = path / "mp_rank_00_model_states.pt"
    if not weights.is_file():
        raise CheckpointError(f"{path}: mp_rank_00_model_states.pt is missing")
    blob = torch.load(str(weights), map_location="cpu", weights_only=True)
    if "module" not in blob:
        raise CheckpointError(f"{weights}: no 'module' entry (keys: {_names(blob)})")
    state = blob["module"]
    ref_config = json.loads((path / CONFIG).read_text()) if (path / CONFIG).is_file() else {}
    vlm_prefix = _split_prefix(state, "vision_model.embeddings.patch_embedding.weight", str(weights))
    head_prefix = _split_prefix(state, "seq_pool_proj.weight", str(weights))
    vlm_sd = _strip(state, vlm_prefix)
    head_sd = _strip(state, head_prefix)
    stray = [k for k in state if not (k.startswith(vlm_prefix) or k.startswith(head_prefix))]

    layers = 1 + max(int(m.group(1)) for k in vlm_sd if (m := re.match(r"language_model\.model\.layers\.(\d+)\.", k)))
    cfg = Evo1Config(
        vlm=vlm or internvl3_1b_vlm(layers),
        context_padding="reference",
        state_pad_value=-1.0,
        num_steps=int(ref_config.get("num_inference_timesteps", 32)),
        head_heads=int(ref_config.get("num_heads", 8)),  # not recoverable from weight shapes
        **_head_shapes(head_sd, str(weights)),
    )

    converted, unknown = convert_remote_vlm(vlm_sd)
    head, head_unknown = convert_head(head_sd, cfg, str(weights))
    converted.update(head)
    model = _finish_import(cfg, converted, unknown + head_unknown + stray, str(weights))
    normalizer = Normalizer.load(path / NORM_STATS) if (path / NORM_STATS).is_file() else None
    return model, Evo1Processor(cfg, load_tokenizer(tokenizer_dir), normalizer)


def import_lerobot(
    path: str | Path, tokenizer_dir: str | Path, vlm: dict | None = None
) -> tuple[Evo1, Evo1Processor]:
    """(d) A LeRobot Evo-1 policy directory (`config.json` + `model.safetensors`). Its VLM uses
    transformers-native names already."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
    lr_config = json.loads((path / CONFIG).read_text())
    if lr_config.get("type", "evo1") != "evo1":
        raise CheckpointError(f"{path}: config type {lr_config.get('type')!r} is not an Evo-1 policy")
    if int(lr_config.get("num_categories", 1)) != 1:
        raise CheckpointError(f"{path}: multi-embodiment heads (num_categories > 1) are not supported")
    if lr_config.get("return_cls_only"):
        raise CheckpointError(f"{path}: return_cls_only heads (one pooled VLM token) are not supported")
    state = load_file(str(path / WEIGHTS))
    vlm_sd = _strip(state, "model.embedder.model.")
    head_sd = _strip(state, "model.action_head.")
    stray = [k for k in state if not k.startswith(("model.embedder.model.", "model.action_head."))]

    layers = int(lr_config.get("vlm_num_layers") or 14)
    vlm = vlm or internvl3_1b_vlm(layers)
    if vlm["text_config"]["num_hidden_layers"] != layers:
        raise CheckpointError(f"{path}: vlm_num_layers={layers} but the given VLM config has "
                              f"{vlm['text_config']['num_hidden_layers']} LM layers")
    resolution = lr_config.get("image_resolution", vlm["vision_config"]["image_size"])
    if list(resolution)[:1] != list(vlm["vision_config"]["image_size"])[:1]:
        raise CheckpointError(f"{path}: image_resolution {resolution} differs from the VLM's "
                              f"{vlm['vision_config']['image_size']}")
    cfg = Evo1Config(
        vlm=vlm,
        head_heads=int(lr_config.get("num_heads", 8)),  # not recoverable from weight shapes
        max_views=int(lr_config.get("max_views", 3)),
        num_steps=int(lr_config.get("num_inference_timesteps", 32)),
        max_text_length=int(lr_config.get("max_text_length", 1024)),
        **_head_shapes(head_sd, str(path / WEIGHTS)),
    )

    converted = {"vlm." + k: v for k, v in vlm_sd.items() if not _UNUSED_LM_HEAD.search(k)}
    head, unknown = convert_head(head_sd, cfg, str(path / WEIGHTS))
    converted.update(head)
    model = _finish_import(cfg, converted, unknown + stray, str(path / WEIGHTS))
    return model, Evo1Processor(cfg, load_tokenizer(tokenizer_dir), lerobot_normalizer(path, lr_config))


# LeRobot's processor files (lerobot.processor.pipeline, 0.6.x): `<pipeline>.json` lists the steps;
# a stateful step's tensors are in its "state_file", flat "<feature>.<stat>" keys, padded by Evo-1's
# processor to max_state_dim / max_action_dim.
_LEROBOT_PIPELINES = {"observation.state": ("policy_preprocessor.json", "normalizer_processor", "STATE"),
                      "action": ("policy_postprocessor.json", "unnormalizer_processor", "ACTION")}
_LEROBOT_MODES = {"MIN_MAX": "min_max", "MEAN_STD": "mean_std", "QUANTILES": "quantiles",
                  "QUANTILE10": "quantile10", "IDENTITY": "identity"}
_LEROBOT_FEATURES = {"observation.state": "input_features", "action": "output_features"}


def lerobot_normalizer(path: str | Path, lr_config: dict) -> Normalizer:
    """The state and action normalisation a LeRobot Evo-1 policy directory saved beside its weights
    (its policy_preprocessor / policy_postprocessor files), cut to the robot's own dims; or an
    error naming what is missing."""
    from safetensors.torch import load_file

    path = Path(path)
    stats = {}
    for key, (pipeline_file, registry_name, feature_type) in _LEROBOT_PIPELINES.items():
        where = path / pipeline_file
        if not where.is_file():
            raise CheckpointError(f"{path}: {pipeline_file} is missing: LeRobot saves it beside the weights "
                                  f"(it holds the {key} normalisation); copy it and its *.safetensors state files "
                                  "from the policy's training output")
        steps = json.loads(where.read_text()).get("steps", [])
        step = next((s for s in steps if s.get("registry_name") == registry_name), None)
        if step is None:
            raise CheckpointError(f"{where}: no {registry_name!r} step; this pipeline does not normalise {key}")
        norm_map = step.get("config", {}).get("norm_map", {})
        if feature_type not in norm_map:
            raise CheckpointError(f"{where}: the {registry_name} step's norm_map has no {feature_type} entry")
        mode = _LEROBOT_MODES.get(norm_map[feature_type])
        if mode is None:
            raise CheckpointError(f"{where}: normalisation mode {norm_map[feature_type]!r} for {key} is not supported "
                                  f"(known: {sorted(_LEROBOT_MODES)})")
        state_file = path / step.get("state_file", "")
        if not step.get("state_file") or not state_file.is_file():
            raise CheckpointError(f"{where}: the {registry_name} step's statistics file "
                                  f"{step.get('state_file')!r} is missing from {path}")
        tensors = load_file(str(state_file))
        feature = lr_config.get(_LEROBOT_FEATURES[key], {}).get(key)
        if not feature or not feature.get("shape"):
            raise CheckpointError(f"{path / CONFIG}: {_LEROBOT_FEATURES[key]} has no {key!r} with a shape: "
                                  "cannot tell the robot's own dims from the padding")
        dim = int(feature["shape"][0])
        entry = {name[len(key) + 1:]: tensors[name].float().flatten()[:dim].tolist()
                 for name in tensors if name.startswith(key + ".") and name.count(".") == key.count(".") + 1}
        missing = [f"{key}.{n}" for n in MODES[mode] if n not in entry]
        if missing:
            raise CheckpointError(f"{state_file}: lacks {missing}, needed by {norm_map[feature_type]} "
                                  f"normalisation of {key} (has {sorted(tensors)})")
        stats[key] = {"mode": mode, **{n: v for n, v in entry.items() if n in MODES[mode] or n in ("min", "max")}}
    return Normalizer(robot=lr_config.get("robot", "lerobot"), mode=stats["observation.state"]["mode"], stats=stats)


def load_internvl_backbone(model: Evo1, internvl_dir: str | Path) -> None:
    """(b) Initialise the VLM from a local InternVL3-1B-hf directory (transformers layout,
    `model.`-prefixed keys, possibly sharded). LM layers past the model's depth and the LM head
    are dropped on purpose; anything else that does not fit is an error."""
    from safetensors.torch import load_file

    internvl_dir = Path(internvl_dir)
    files = sorted(internvl_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{internvl_dir}: no *.safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    depth = model.config.num_llm_layers
    converted, unknown = {}, []
    for key, value in state.items():
        if _UNUSED_LM_HEAD.search(key):
            continue
        native = key[len("model.") :] if key.startswith("model.") else key
        layer = re.match(r"language_model\.layers\.(\d+)\.", native)
        if layer and int(layer.group(1)) >= depth:
            continue  # Evo-1 keeps only the first layers of the LM
        if not native.startswith(("vision_tower.", "multi_modal_projector.", "language_model.")):
            unknown.append(key)
        converted[native] = value
    if unknown:
        raise CheckpointError(f"{internvl_dir}: keys that are not InternVL backbone weights: {_names(unknown)}")
    load_strict(model.vlm, converted, str(internvl_dir))
