"""Fresh models: a preset with its tokenizer, optionally the InternVL3-1B-hf backbone, and the
xArm6 default normalisation (joint limits as bounds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..robot import xarm6
from .checkpoint import load_internvl_backbone
from .config import IMG_CONTEXT, preset
from .evo1 import Evo1
from .processor import Normalizer
from .tokenizer import build_tiny_tokenizer, load_tokenizer


def xarm6_normalizer() -> Normalizer:
    """Bounds = the arm's joint limits + the gripper range: usable before any data exists."""
    lo = np.append(xarm6.JOINT_LOWER, xarm6.GRIPPER_OPEN).tolist()
    hi = np.append(xarm6.JOINT_UPPER, xarm6.GRIPPER_CLOSED).tolist()
    stats = {"min": lo, "max": hi}
    return Normalizer(robot="xarm6", mode="bounds", stats={"observation.state": stats, "action": dict(stats)})


def build_model(
    preset_name: str, tokenizer_dir: str | Path | None = None, internvl_dir: str | Path | None = None, seed: int = 0
):
    """(model, tokenizer). evo1-0.77b needs the tokenizer of InternVL3-1B-hf (`tokenizer_dir` or
    `internvl_dir`); evo1-tiny builds its own tiny tokenizer unless one is given."""
    tokenizer_dir = tokenizer_dir or internvl_dir
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif preset_name == "evo1-tiny":
        tokenizer = build_tiny_tokenizer()
    else:
        raise ValueError(f"{preset_name} needs a tokenizer: pass the local InternVL3-1B-hf directory")
    cfg = preset(preset_name, vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
    torch.manual_seed(seed)
    model = Evo1(cfg)
    if internvl_dir is not None:
        load_internvl_backbone(model, internvl_dir)
    return model, tokenizer
