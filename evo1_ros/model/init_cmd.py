"""`evo1-ros init`: a fresh checkpoint to fine-tune from (or to dry-run the graph with)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="evo1-tiny", help="evo1-0.77b or evo1-tiny (default)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--internvl", help="local InternVL3-1B-hf directory: backbone weights + tokenizer")
    parser.add_argument("--tokenizer", help="local tokenizer directory (default: InternVL's, or tiny for evo1-tiny)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from .build import build_model, xarm6_normalizer
    from .checkpoint import save_checkpoint

    model, tokenizer = build_model(args.preset, args.tokenizer, args.internvl, args.seed)
    path = save_checkpoint(args.out, model, tokenizer, xarm6_normalizer())
    n = sum(p.numel() for p in model.parameters())
    backbone = f"backbone from {args.internvl}" if args.internvl else "random weights"
    print(f"wrote {path} ({args.preset}, {n:,d} parameters, {backbone}, xArm6 joint-limit normalisation)")
    return 0
