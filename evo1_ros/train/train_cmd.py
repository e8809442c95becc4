r"""`evo1-ros train`: Evo-1's two-stage fine-tuning on `evo1` datasets (the paper's recipe).

Stage 1 trains the integration module and action head with the VLM frozen; stage 2 trains
everything. Recipe: AdamW (lr 1e-5, weight decay 1e-3), linear warmup then cosine decay to 0,
grad-norm clip 1.0, bf16 autocast on CUDA, image augmentation with p = 0.5 per image.

    evo1-ros train --data data/pick_can --preset evo1-0.77b --internvl InternVL3-1B-hf \
        --stage both --stage1-steps 5000 --steps 65000 --out runs/pick_can
    evo1-ros train --data data/pick_can --init runs/pick_can/stage1/final --stage 2 --out runs/s2

Several GPUs (one process per GPU, DDP; --batch-size is per GPU):

    torchrun --standalone --nproc_per_node 8 -m evo1_ros.cli train --data data/pick_can \
        --preset evo1-0.77b --internvl InternVL3-1B-hf --stage both --out runs/pick_can

Output, per stage, in OUT/stage1 and OUT/stage2:

    step-NNNNNN/        checkpoint every --save-every steps (the newest --keep are kept):
                        our checkpoint format + trainer_state.pt (optimizer, step, RNG states of
                        torch / numpy / python per rank, data order) for --resume
    final/              the stage's finished model (what `--init` and the nodes load)
    train_log.jsonl     one line per step: step, loss, lr, grad_norm, seconds

`--resume` continues from the newest step checkpoint and gives the same weights as a run that was
never interrupted (same --batch-size, GPU count and seed). The learning rate is a pure function of
the step, so the step restores the schedule.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_STEPS = {1: 5000, 2: 65000}  # the low ends of the reference's 5k-20k and 65k-80k


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR",
                        help="evo1 dataset directories (from `evo1-ros convert`), trained on as one")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--preset", help="start from a fresh model: evo1-0.77b or evo1-tiny")
    start.add_argument("--init", metavar="CHECKPOINT", help="start from one of our checkpoints")
    parser.add_argument("--internvl", metavar="DIR",
                        help="with --preset: local InternVL3-1B-hf directory (backbone weights + tokenizer)")
    parser.add_argument("--stage", choices=["1", "2", "both"], default="both",
                        help="1: VLM frozen; 2: everything trained; both: 1 then 2 (default)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--steps", type=int,
                        help=f"steps of the last (or only) stage (default {DEFAULT_STEPS[1]} for "
                             f"--stage 1, {DEFAULT_STEPS[2]} otherwise)")
    parser.add_argument("--stage1-steps", type=int, default=DEFAULT_STEPS[1],
                        help="steps of stage 1 with --stage both (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="per GPU (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1000, help="linear warmup steps (default %(default)s)")
    parser.add_argument("--save-every", type=int, default=1000, help="checkpoint period in steps")
    parser.add_argument("--keep", type=int, default=2, help="step checkpoints kept per stage")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="end this run at step N of a stage, checkpointed (e.g. a job's time "
                             "slot); --resume continues it")
    parser.add_argument("--image-lag-steps", type=int, default=0, metavar="N",
                        help="pair each state with camera frames 0..N dataset steps older (uniform), so the "
                             "policy tolerates camera latency; for data recorded in lockstep, e.g. sim demos "
                             "(default 0)")
    parser.add_argument("--augment-shift", type=float, default=0.0, metavar="FRACTION",
                        help="also shift augmented images by up to this fraction of their side, e.g. 0.06 "
                             "(default 0: the reference augmentation only)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute ViT, LM and head-block activations in the backward pass instead of "
                             "storing them: less GPU memory (a larger --batch-size fits), ~30 %% more compute")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=2, help="data loader processes per GPU")


def run(args: argparse.Namespace) -> int:
    from ..model.checkpoint import CheckpointError
    from .data import DataError
    from .trainer import ResumeError, train

    if args.steps is None:
        args.steps = DEFAULT_STEPS[1 if args.stage == "1" else 2]
    if not 0.0 <= args.augment_shift <= 0.25:
        print(f"evo1-ros train: error: --augment-shift must lie in 0..0.25 (a fraction of the image side), "
              f"not {args.augment_shift:g}", file=sys.stderr)
        return 2
    try:
        train(args)
    except (DataError, CheckpointError, ResumeError) as exc:
        print(f"evo1-ros train: error: {exc}", file=sys.stderr)
        return 1
    return 0


