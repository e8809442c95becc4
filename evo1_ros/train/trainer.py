"""The training loop behind `evo1-ros train` (see train_cmd.py for usage, torchrun and the output
layout): data order, augmentation, the schedule, checkpoints and exact resume, DDP."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..model.build import build_model
from ..model.checkpoint import WEIGHTS, load_checkpoint, load_strict, save_checkpoint
from ..model.processor import Evo1Processor
from ..runtime.deployment import DeploymentConfig
from .data import Collate, DataError, ResumableSampler, dataset_deployment, model_inputs, open_datasets
from .stages import optimizer_groups, set_gradient_checkpointing, set_stage

WEIGHT_DECAY = 1e-3
GRAD_CLIP = 1.0
AUGMENT_P = 0.5
TRAINER_STATE = "trainer_state.pt"


class ResumeError(ValueError):
    pass


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Dist:
    """This process's place in a torchrun job (or a lone process) and its device."""

    def __init__(self, device: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.world > 1:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device
        self.main = self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()


def train(args) -> None:
    """Run the stages `args` (train_cmd's options) ask for."""
    ctx = Dist(args.device)
    try:
        if args.init:
            model, processor = load_checkpoint(args.init)
        else:
            model, tokenizer = build_model(args.preset, internvl_dir=args.internvl, seed=args.seed)
            processor = Evo1Processor(model.config, tokenizer, None)
        dataset, normalizer = open_datasets(args.data, model.config, args.image_lag_steps)
        deployment = dataset_deployment(args.data)  # action rate, views, instructions of the data
        # The data being trained on defines the normalisation; it travels with every checkpoint.
        processor.normalizer = normalizer
        model.to(ctx.device)
        stages = [1, 2] if args.stage == "both" else [int(args.stage)]
        for stage in stages:
            steps = args.stage1_steps if args.stage == "both" and stage == 1 else args.steps
            if not train_stage(model, processor, deployment, dataset, stage, steps, Path(args.out) / f"stage{stage}",
                               args, ctx):
                return  # stopped by --stop-after
    finally:
        ctx.close()


def train_stage(model, processor, deployment: DeploymentConfig, dataset, stage: int, steps: int, out: Path, args,
                ctx: Dist) -> bool:
    """Train one stage to `steps` (resuming if asked); True once `out/final` holds the result."""
    final = out / "final"
    if args.resume and (final / WEIGHTS).is_file():
        load_strict(model, load_file(str(final / WEIGHTS)), str(final))  # stage done: carry on from it
        if ctx.main:
            print(f"stage {stage}: already finished in {final}")
        return True
    if not args.resume and out.exists() and any(out.iterdir()):
        raise ResumeError(f"{out} already holds a run: pass --resume to continue it, or another --out")

    set_stage(model, stage)
    set_gradient_checkpointing(model, args.gradient_checkpointing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(optimizer_groups(model, WEIGHT_DECAY), lr=args.lr)
    sampler = ResumableSampler(dataset, ctx.world, ctx.rank, args.seed)
    per_epoch = len(sampler) // args.batch_size
    if per_epoch == 0:
        raise DataError(f"{len(dataset)} samples make no full batch of {args.batch_size} x {ctx.world} GPU(s)")
    # The loader gets its own generator so that starting an iterator (each epoch, and on resume)
    # draws nothing from the global RNG the augmentation and the flow-matching noise use.
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, collate_fn=Collate(processor),
                        num_workers=args.num_workers, pin_memory=ctx.device.type == "cuda",
                        drop_last=True, generator=torch.Generator(), persistent_workers=args.num_workers > 0)
    # What fixes the data order: a resume must match it to continue exactly.
    run_config = {"samples": len(dataset), "batch_size": args.batch_size, "world_size": ctx.world, "seed": args.seed}

    start = 0
    latest = latest_checkpoint(out)
    if args.resume and latest is not None:
        start = restore(latest, model, optimizer, run_config, ctx)
    else:
        seed_everything(args.seed + ctx.rank)  # ranks draw different noise and augmentations
    if start > steps:
        raise ResumeError(f"{latest} is at step {start}, past --steps {steps}")
    ctx.barrier()  # every rank has read `out` before rank 0 writes to it

    # DDP hooks into forward(); Evo1's training entry point is `loss`, hence the thin wrapper.
    step_loss = LossOf(model)
    if ctx.world > 1:
        step_loss = DistributedDataParallel(step_loss, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    model.train()
    log = out / "train_log.jsonl"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        cut_log(log, start)
        n_train = sum(p.numel() for p in trainable)
        print(f"stage {stage}: {len(dataset)} samples, {n_train:,d} trainable parameters, "
              f"steps {start}..{steps}, batch {args.batch_size} x {ctx.world}, device {ctx.device}")
    bar = tqdm(total=steps, initial=start, desc=f"stage {stage}", disable=not ctx.main, dynamic_ncols=True)
    batches = endless(loader, sampler, start, per_epoch, args.batch_size)
    autocast = bf16_autocast(ctx.device)
    t0 = time.time()
    for step in range(start, steps):
        lr = lr_at(step, args.lr, args.warmup, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs = model_inputs(next(batches), model.config, ctx.device, AUGMENT_P, augment_shift=args.augment_shift)
        loss, grad_norm = train_step(step_loss, optimizer, trainable, inputs, autocast)

        done = step + 1
        if ctx.main:  # rank 0's batch loss; seconds since this process began the stage
            record = {"step": done, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                      "seconds": round(time.time() - t0, 3)}
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            bar.update()
        stopping = done == args.stop_after
        if done % args.save_every == 0 or stopping:
            state = {"step": done, "optimizer": optimizer.state_dict(), "rng": ctx.gather(rng_state()),
                     "data": {**run_config, "epoch": done // per_epoch, "position": done % per_epoch}}
            if ctx.main:
                save_step(out, done, model, processor, deployment, state, args.keep)
            ctx.barrier()
        if stopping:
            bar.close()
            if ctx.main:
                print(f"stage {stage}: stopped at step {done}; --resume continues")
            return False
    bar.close()
    if ctx.main:
        save_checkpoint(final, model, processor.tokenizer, processor.normalizer)
        deployment.save(final)
        print(f"stage {stage}: wrote {final}")
    ctx.barrier()
    return True


def bf16_autocast(device: torch.device):
    """The recipe's mixed precision: bf16 autocast on CUDA, plain fp32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(step_loss, optimizer, trainable, inputs, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on (obs, actions, action_mask); returns the loss and the gradient norm
    before clipping. Also what benchmarks/train_throughput.py times."""
    with autocast:
        loss = step_loss(*inputs)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


class LossOf(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, obs, actions, action_mask):
        return self.model.loss(obs, actions, action_mask)


def endless(loader, sampler, start: int, per_epoch: int, batch_size: int):
    """Batches from global step `start` on, epoch after epoch, in the sampler's fixed order."""
    epoch, position = divmod(start, per_epoch)
    while True:
        sampler.start_at(epoch, position * batch_size)
        yield from loader
        epoch, position = epoch + 1, 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def latest_checkpoint(out: Path) -> Path | None:
    # A step directory counts once its trainer_state.pt exists: it is written last (see save_step).
    done = sorted(p for p in out.glob("step-*") if (p / TRAINER_STATE).is_file())
    return done[-1] if done else None


def save_step(out: Path, step: int, model, processor, deployment: DeploymentConfig, state: dict, keep: int) -> None:
    path = out / f"step-{step:06d}"
    tmp = out / f".{path.name}.tmp"  # renamed into place when complete: a crash leaves no half checkpoint
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, model, processor.tokenizer, processor.normalizer)
    deployment.save(tmp)
    torch.save(state, tmp / TRAINER_STATE)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    for old in sorted(out.glob("step-*"))[: -max(keep, 1)]:
        shutil.rmtree(old)


def restore(path: Path, model, optimizer, run_config: dict, ctx: Dist) -> int:
    """Weights, optimizer, RNG states and data position of a step checkpoint; returns its step."""
    # Our own file; it holds numpy / python RNG tuples, which weights_only loading refuses.
    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    saved = {k: state["data"][k] for k in run_config}
    if saved != run_config:
        raise ResumeError(f"{path} was written with {saved}, this run has {run_config}: "
                          "an exact resume needs the same data, batch size, GPU count and seed")
    load_strict(model, load_file(str(path / WEIGHTS)), str(path))
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"][ctx.rank])
    if ctx.main:
        print(f"resuming from {path} (step {state['step']})")
    return state["step"]


def cut_log(path: Path, start: int) -> None:
    """Drop log lines past `start`: a resumed run redoes the steps after its checkpoint."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    path.write_text("".join(line for line in lines if json.loads(line)["step"] <= start))
