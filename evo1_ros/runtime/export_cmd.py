"""`evo1-ros export-onnx`: a checkpoint's action head as ONNX graphs for the onnxruntime backend."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="evo1_ros checkpoint directory")
    parser.add_argument("--out", help="output directory (default: CHECKPOINT/onnx)")


def run(args) -> int:
    from pathlib import Path

    from ..model.checkpoint import load_checkpoint
    from .engine import export_onnx

    model, _ = load_checkpoint(args.checkpoint)
    out = export_onnx(model, args.out or Path(args.checkpoint) / "onnx")
    print(f"wrote {out}: action-head K/V and velocity graphs (use inference parameter backend:=onnx onnx_dir:={out})")
    return 0
