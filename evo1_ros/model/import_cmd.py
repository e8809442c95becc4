"""`evo1-ros import`: a reference or LeRobot Evo-1 checkpoint -> an evo1_ros checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint directory to convert")
    parser.add_argument("--format", required=True, choices=["reference", "lerobot"])
    parser.add_argument("--tokenizer", required=True, help="local InternVL3-1B-hf directory (its tokenizer)")
    parser.add_argument("--out", required=True, help="evo1_ros checkpoint directory to write")


def run(args) -> int:
    from .checkpoint import import_lerobot, import_reference, save_checkpoint

    importer = import_reference if args.format == "reference" else import_lerobot
    model, processor = importer(args.source, args.tokenizer)
    save_checkpoint(args.out, model, processor.tokenizer, processor.normalizer)
    note = "" if processor.normalizer else " (no norm_stats.json found: add one before deploying)"
    print(f"imported {args.format} checkpoint {args.source} -> {args.out}: "
          f"{sum(p.numel() for p in model.parameters()):,d} parameters, every key matched{note}")
    return 0
