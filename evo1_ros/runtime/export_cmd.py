"""`evo1-ros export-onnx`: a checkpoint's action head as an ONNX graph for the onnxruntime backend."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="evo1_ros checkpoint directory")
    parser.add_argument("--out", help="output directory (default: CHECKPOINT/onnx)")
    parser.add_argument("--steps", type=int, help="Euler steps to unroll (default: the checkpoint's num_steps); "
                                                  "the onnx backend runs exactly this many")


def run(args) -> int:
    from pathlib import Path

    from ..model.checkpoint import load_checkpoint
    from .engine import export_onnx

    model, _ = load_checkpoint(args.checkpoint)
    out = export_onnx(model, args.out or Path(args.checkpoint) / "onnx", num_steps=args.steps)
    print(f"wrote {out}: the action head with its Euler loop unrolled "
          f"(use inference parameter backend:=onnx onnx_dir:={out})")
    return 0
