"""`evo1-ros info`: structure and parameter count of a preset or a checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="evo1-0.77b or evo1-tiny")
    src.add_argument("--checkpoint", help="an evo1_ros checkpoint directory")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(args) -> int:
    import torch

    from .config import Evo1Config, preset
    from .evo1 import Evo1
    from .tokenizer import build_tiny_tokenizer

    if args.checkpoint:
        from pathlib import Path

        cfg = Evo1Config.load(Path(args.checkpoint) / "config.json")
        name = args.checkpoint
    elif args.preset == "evo1-tiny":
        tok = build_tiny_tokenizer()
        cfg = preset("evo1-tiny", vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
        name = args.preset
    else:
        cfg, name = preset(args.preset), args.preset
    with torch.device("meta"):  # shapes only: no memory, instant even for 0.77 B
        model = Evo1(cfg)
    parts = {
        "vision tower (ViT)": model.vlm.vision_tower,
        "projector (pixel-shuffle MLP)": model.vlm.multi_modal_projector,
        f"language model ({cfg.num_llm_layers} layers)": model.vlm.language_model,
        "integration (state MLP)": model.head.state_encoder,
        "action head (DiT + I/O)": model.head,
    }
    print(f"{name}: views <= {cfg.max_views} x {cfg.tokens_per_view} tokens at {cfg.image_size} px, "
          f"H={cfg.chunk_length}, state/action dims {cfg.max_state_dim}/{cfg.max_action_dim}, "
          f"{cfg.head_blocks} head blocks, {cfg.num_steps} Euler steps")
    for label, module in parts.items():
        n = count(module) - (count(model.head.state_encoder) if module is model.head else 0)
        print(f"  {label:32s} {n:>14,d}")
    print(f"  {'total':32s} {count(model):>14,d}")
    return 0
