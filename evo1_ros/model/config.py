"""Evo1Config: every number that defines an Evo-1 network, and the named presets. How a
checkpoint is run (action rate, chunk execution, sampler noise, unit conventions) is not here: see
`runtime/deployment.py`.

The backbone is described by a `transformers.InternVLConfig` (stored as a dict so the config
round-trips through JSON); the language model is built with `num_llm_layers` layers directly,
which is the same network as InternVL3-1B's Qwen2.5-0.5B cut after that many layers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# Keys older checkpoints' config.json carried that say how to run the model, not what it is: they
# moved to the checkpoint's deployment settings (runtime/deployment.py).
LEGACY_DEPLOYMENT_KEYS = ("action_rate_hz", "chunk_mode", "request_threshold", "noise_scale")

# Placeholder tokens of the InternVL prompt format.
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


def internvl3_1b_vlm(num_llm_layers: int = 14) -> dict:
    """InternVL3-1B-hf shapes: InternViT-300M (448 px, patch 14) + Qwen2.5-0.5B."""
    return {
        "downsample_ratio": 0.5,
        "image_seq_length": 256,
        "image_token_id": 151667,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": [448, 448],
            "patch_size": [14, 14],
            "attention_bias": True,
            "use_qk_norm": False,
            "layer_norm_eps": 1e-6,
            "layer_scale_init_value": 0.1,
            "norm_type": "layer_norm",
            "use_mean_pooling": True,
            "hidden_act": "gelu",
        },
        "text_config": {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": num_llm_layers,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151674,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "hidden_act": "silu",
        },
    }


def tiny_vlm(vocab_size: int, image_token_id: int, image_size: int = 112) -> dict:
    """The same InternVL structure at toy widths: fast on 2 CPU cores, for tests and the sim demo."""
    patches = (image_size // 14) ** 2
    return {
        "downsample_ratio": 0.5,
        "image_seq_length": patches // 4,
        "image_token_id": image_token_id,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": [image_size, image_size],
            "patch_size": [14, 14],
            "attention_bias": True,
            "use_qk_norm": False,
        },
        "text_config": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab_size,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": True,
        },
    }


@dataclass
class Evo1Config:
    vlm: dict = field(default_factory=internvl3_1b_vlm)
    max_views: int = 3
    chunk_length: int = 50  # H
    max_state_dim: int = 24
    max_action_dim: int = 24
    head_width: int = 896  # must equal the LM hidden size: context tokens enter the head as is
    head_heads: int = 8
    head_blocks: int = 8
    head_ffn_mult: int = 4
    head_hidden: int = 1024  # hidden width of the output MLP
    state_hidden: int = 1024  # hidden width of the state MLP
    num_steps: int = 32  # Euler steps at inference
    # "mask": padded and absent-view tokens are dropped from the head's keys (LeRobot port).
    # "reference": they enter as zero rows padded to max_text_length, which is what the
    # flash-attention-trained reference checkpoints saw.
    context_padding: str = "mask"
    # Value of the state dims past the robot's own: LeRobot zero-pads after normalising; the
    # reference normalises the zero-padded state with zero stats, which puts -1 there.
    state_pad_value: float = 0.0
    max_text_length: int = 1024
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        text = self.vlm["text_config"]
        if self.head_width != text["hidden_size"]:
            raise ValueError(
                f"head_width {self.head_width} must equal the LM hidden size {text['hidden_size']}"
            )
        if self.head_width % self.head_heads:
            raise ValueError(f"head_width {self.head_width} not divisible by head_heads {self.head_heads}")
        if self.context_padding not in ("mask", "reference"):
            raise ValueError(f"context_padding must be 'mask' or 'reference', got {self.context_padding!r}")
        if not 1 <= self.max_views <= 3:
            raise ValueError(f"max_views must be 1..3, got {self.max_views}")

    @property
    def image_size(self) -> int:
        return int(self.vlm["vision_config"]["image_size"][0])

    @property
    def tokens_per_view(self) -> int:
        return int(self.vlm["image_seq_length"])

    @property
    def num_llm_layers(self) -> int:
        return int(self.vlm["text_config"]["num_hidden_layers"])

    def internvl_config(self):
        from transformers import InternVLConfig

        cfg = InternVLConfig(**self.vlm)
        cfg._attn_implementation = self.attn_implementation
        cfg.text_config._attn_implementation = self.attn_implementation
        cfg.vision_config._attn_implementation = self.attn_implementation
        return cfg

    def to_dict(self) -> dict:
        return {"model_type": "evo1", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Evo1Config":
        # Deployment settings older checkpoints kept here belong to the runtime now
        # (runtime/deployment.py reads them, with a warning); the network does not depend on them.
        d = {k: v for k, v in d.items() if k != "model_type" and k not in LEGACY_DEPLOYMENT_KEYS}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Evo1Config fields: {unknown}")
        return cls(**d)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "Evo1Config":
        return cls.from_dict(json.loads(Path(path).read_text()))


def preset(name: str, vocab_size: int | None = None, image_token_id: int | None = None) -> Evo1Config:
    """`evo1-0.77b`: the paper's model (InternVL3-1B shapes, 14 LM layers, H=50, dims 24).
    `evo1-tiny`: the same structure at toy widths; needs the vocabulary of its tokenizer."""
    if name == "evo1-0.77b":
        return Evo1Config()
    if name == "evo1-tiny":
        if vocab_size is None or image_token_id is None:
            raise ValueError("evo1-tiny needs vocab_size and image_token_id from its tokenizer")
        # The head reads the whole chunk out through one head_width vector, so head_width must
        # exceed chunk_length x valid action dims (16 x 7 for xArm6) or noise cannot be undone.
        return Evo1Config(
            vlm=tiny_vlm(vocab_size, image_token_id),
            chunk_length=16,
            head_width=128,
            head_heads=4,
            head_blocks=4,
            head_hidden=256,
            state_hidden=256,
            max_text_length=256,
        )
    raise ValueError(f"unknown preset {name!r}; choose from {PRESETS}")


PRESETS = ("evo1-0.77b", "evo1-tiny")
