"""Training throughput and peak memory of `evo1-ros train`'s step, per stage, with and without
gradient checkpointing.

    python benchmarks/train_throughput.py --json OUT.json                      # evo1-0.77b on CUDA
    python benchmarks/train_throughput.py --preset evo1-tiny --device cpu --batch-size 2 --steps 2   # smoke

What is timed is the trainer's own step (`trainer.train_step`: bf16 autocast on CUDA, backward,
grad clip, AdamW) on batches shaped as the data loader delivers them: uint8 views at the dataset's
resolution (--image-size), augmented and resized to the model's on the device (`model_inputs`),
the xArm6's 7 valid action dims. The data loader's decoding (CPU workers, overlapped with the GPU)
is not included. Random-init model, no hub. Prints a table and, for planning, the hours the
reference recipe's step counts would take at the measured rate (stage 1: 5,000 steps, stage 2:
65,000); writes JSON after every configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model  # noqa: E402  benchmarks/machine.py, beside this script

from evo1_ros.model.config import IMG_CONTEXT, preset  # noqa: E402
from evo1_ros.model.evo1 import Evo1  # noqa: E402
from evo1_ros.model.processor import Evo1Processor  # noqa: E402
from evo1_ros.model.tokenizer import build_tiny_tokenizer  # noqa: E402
from evo1_ros.train.data import model_inputs  # noqa: E402
from evo1_ros.train.stages import optimizer_groups, set_gradient_checkpointing, set_stage  # noqa: E402
from evo1_ros.train.train_cmd import DEFAULT_STEPS  # noqa: E402
from evo1_ros.train.trainer import AUGMENT_P, WEIGHT_DECAY, LossOf, bf16_autocast, train_step  # noqa: E402

INSTRUCTIONS = ["pick up the can and put it in the white box", "put the can in the box"]


def synthetic_batch(processor: Evo1Processor, batch: int, views: int, image_size: int, generator) -> dict:
    """A collated batch as `train.data.Collate` returns it, with random content."""
    cfg = processor.cfg
    images = torch.randint(0, 256, (batch, cfg.max_views, 3, image_size, image_size), dtype=torch.uint8,
                           generator=generator)
    view_mask = torch.zeros(batch, cfg.max_views, dtype=torch.bool)
    view_mask[:, :views] = True
    input_ids, attention_mask = processor.tokenize([INSTRUCTIONS[i % 2] for i in range(batch)])
    action_mask = torch.zeros(batch, cfg.chunk_length, cfg.max_action_dim, dtype=torch.bool)
    action_mask[:, :, :7] = True
    return {"images": images, "view_mask": view_mask, "input_ids": input_ids, "attention_mask": attention_mask,
            "state": torch.rand(batch, cfg.max_state_dim, generator=generator) * 2 - 1,
            "actions": torch.rand(batch, cfg.chunk_length, cfg.max_action_dim, generator=generator) * 2 - 1,
            "action_mask": action_mask}


def measure(model, processor, stage: int, checkpointing: bool, args, device) -> dict:
    set_stage(model, stage)
    set_gradient_checkpointing(model, checkpointing)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(optimizer_groups(model, WEIGHT_DECAY), lr=1e-5)
    step_loss, autocast = LossOf(model), bf16_autocast(device)
    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(processor, args.batch_size, args.views, args.image_size, generator) for _ in range(2)]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(args.warmup + args.steps):  # the first steps allocate the optimizer state
        sync()
        t = time.perf_counter()
        inputs = model_inputs(batches[i % 2], model.config, device, AUGMENT_P)
        loss, _ = train_step(step_loss, optimizer, trainable, inputs, autocast)
        losses.append(loss.item())  # the trainer logs it every step: the same host sync
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]
    del optimizer
    return {"stage": stage, "gradient_checkpointing": checkpointing, "batch_size": args.batch_size,
            "views": args.views, "image_size": args.image_size, "trainable_params": sum(p.numel() for p in trainable),
            "step_s_p50": step_s, "samples_per_s": args.batch_size / step_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "recipe_steps": DEFAULT_STEPS[stage], "recipe_hours": DEFAULT_STEPS[stage] * step_s / 3600,
            "finite_loss": all(map(math.isfinite, losses))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="evo1-0.77b", choices=["evo1-0.77b", "evo1-tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    ap.add_argument("--checkpointing", choices=["both", "off", "on"], default="both")
    ap.add_argument("--batch-size", type=int, default=16, help="per GPU (the recipe's 16)")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224, help="the dataset's frames (resized to the model's)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--budget-s", type=float, default=0, help="start no configuration after this many seconds")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    start = time.time()
    tokenizer = build_tiny_tokenizer()  # ids only matter through the embedding table
    cfg = preset(args.preset, vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
    cfg.vlm["image_token_id"] = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    torch.manual_seed(0)
    model = Evo1(cfg).to(device)  # fp32 weights, bf16 autocast: what the trainer does
    processor = Evo1Processor(cfg, tokenizer, None)
    checkpointing = {"both": [False, True], "off": [False], "on": [True]}[args.checkpointing]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "preset": args.preset, "python": platform.python_version(),
            "torch": torch.__version__, "cpu": cpu_model(), "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "params": sum(p.numel() for p in model.parameters())}
    rows = []
    for stage in args.stages:
        for ckpt in checkpointing:
            if args.budget_s and time.time() - start > args.budget_s:
                print(f"budget of {args.budget_s:.0f} s spent: stage {stage} checkpointing {ckpt} not run", flush=True)
                continue
            try:
                row = measure(model, processor, stage, ckpt, args, device)
            except torch.cuda.OutOfMemoryError as exc:
                row = {"stage": stage, "gradient_checkpointing": ckpt, "batch_size": args.batch_size,
                       "error": f"out of memory: {exc}".splitlines()[0]}
            model.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            if "error" in row:
                print(f"stage {stage} checkpointing {ckpt!s:5s} {row['error']}", flush=True)
            else:
                peak = f"  peak {row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else ""
                print(f"stage {stage} checkpointing {ckpt!s:5s} batch {args.batch_size}: "
                      f"{row['step_s_p50'] * 1e3:8.1f} ms/step  {row['samples_per_s']:7.1f} samples/s{peak}  "
                      f"{row['recipe_steps']} steps = {row['recipe_hours']:.2f} h", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    return 0 if rows and all("error" in r or r["finite_loss"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
