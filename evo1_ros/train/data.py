"""From `evo1` dataset directories to the model's training tensors.

The datasets' cameras fill the model's view slots in order (meta.json's `cameras`); unused slots
are zero images masked out of the model. State and action are normalised with the datasets'
statistics ("bounds"), which are saved with every checkpoint, and padded to the model's 24 dims.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DistributedSampler, Sampler

from ..data.dataset import Evo1Dataset
from ..model.config import Evo1Config
from ..model.processor import Evo1Processor, Normalizer, normalize_pixels
from ..runtime.deployment import Conventions, DeploymentConfig
from .augment import augment

ROBOT = "xarm6"


class DataError(ValueError):
    pass


def open_datasets(dirs: list[str | Path], cfg: Evo1Config, max_image_lag: int = 0) -> tuple[ConcatDataset, Normalizer]:
    """The datasets as one, with "bounds" normalisation over all of them. Anything the model
    cannot take is an error naming the directory. `max_image_lag`: see `Evo1Dataset`."""
    parts, metas, stats = [], [], []
    for d in map(Path, dirs):
        if not (d / "meta.json").is_file():
            raise DataError(f"{d}: not an evo1 dataset (no meta.json); write one with `evo1-ros convert`")
        ds = Evo1Dataset(d, horizon=cfg.chunk_length, max_image_lag=max_image_lag)
        meta = ds.meta
        if len(ds) == 0:
            raise DataError(f"{d}: dataset has no samples")
        if len(ds.cameras) > cfg.max_views:
            raise DataError(f"{d}: {len(ds.cameras)} cameras {ds.cameras}, the model takes at most "
                            f"{cfg.max_views} views")
        if len(ds.cameras) == 0:
            raise DataError(f"{d}: dataset has no cameras")
        if metas and meta["fps"] != metas[0]["fps"]:
            raise DataError(f"{d}: {meta['fps']} Hz differs from {dirs[0]}'s {metas[0]['fps']} Hz; "
                            "convert with the same --rate")
        if metas and meta["image_size"] != metas[0]["image_size"]:
            raise DataError(f"{d}: image size {meta['image_size']} differs from {dirs[0]}'s "
                            f"{metas[0]['image_size']}; convert with the same --image-size")
        for key, limit in (("state_names", cfg.max_state_dim), ("action_names", cfg.max_action_dim)):
            if len(meta[key]) > limit:
                raise DataError(f"{d}: {len(meta[key])} {key[:-6]} dims, the model takes at most {limit}")
            if metas and meta[key] != metas[0][key]:
                raise DataError(f"{d}: {key} {meta[key]} differ from {dirs[0]}'s {metas[0][key]}")
        parts.append(ds)
        metas.append(meta)
        stats.append(ds.norm_stats)
    normalizer = Normalizer(robot=ROBOT, mode="bounds", stats={
        "observation.state": merge_stats([s["state"] for s in stats], [len(p) for p in parts]),
        "action": merge_stats([s["action"] for s in stats], [len(p) for p in parts]),
    })
    return ConcatDataset(parts), normalizer


def dataset_deployment(dirs: list[str | Path]) -> DeploymentConfig:
    """Deployment settings a checkpoint trained on these datasets carries: how far apart its actions
    are (the grid rate), its views (the cameras, in slot order) and the instructions it saw. The
    datasets hold ROS units (rad, drive_joint), so the conventions are the defaults."""
    metas = [json.loads((Path(d) / "meta.json").read_text()) for d in dirs]
    instructions = sorted({ep["instruction"] for meta in metas for ep in meta["episodes"]})
    return DeploymentConfig(action_rate_hz=float(metas[0]["fps"]), instructions=instructions,
                            conventions=Conventions(views=list(metas[0]["cameras"])))


def merge_stats(stats: list[dict], counts: list[int]) -> dict:
    """Per-dim min/max/mean/std of several datasets as if they were one."""
    w = np.asarray(counts, np.float64)[:, None] / sum(counts)
    mean = np.asarray([s["mean"] for s in stats])
    second = np.asarray([s["std"] for s in stats]) ** 2 + mean**2  # E[x^2] of each dataset
    total_mean = (w * mean).sum(0)
    return {
        "min": np.min([s["min"] for s in stats], 0).tolist(),
        "max": np.max([s["max"] for s in stats], 0).tolist(),
        "mean": total_mean.tolist(),
        "std": np.sqrt(np.maximum((w * second).sum(0) - total_mean**2, 0)).tolist(),
    }


class Collate:
    """Dataset items -> one batch of CPU tensors (runs in the loader workers): uint8 views in
    slots, prompt tokens, normalised and padded state / actions, and the action mask."""

    def __init__(self, processor: Evo1Processor):
        self.processor = processor
        self.cfg = processor.cfg

    def __call__(self, items: list[dict]) -> dict:
        cfg, norm = self.cfg, self.processor.normalizer
        b, h = len(items), cfg.chunk_length
        size = items[0]["images"][next(iter(items[0]["images"]))].shape[-1]
        images = torch.zeros(b, cfg.max_views, 3, size, size, dtype=torch.uint8)
        view_mask = torch.zeros(b, cfg.max_views, dtype=torch.bool)
        for i, item in enumerate(items):
            for slot, frame in enumerate(item["images"].values()):  # camera order = slot order
                images[i, slot] = frame
                view_mask[i, slot] = True
        input_ids, attention_mask = self.processor.tokenize([item["instruction"] for item in items])

        state = norm.normalize("observation.state", np.stack([item["state"].numpy() for item in items]))
        padded_state = torch.full((b, cfg.max_state_dim), float(cfg.state_pad_value))
        padded_state[:, : state.shape[1]] = torch.from_numpy(state).float()

        action = norm.normalize("action", np.stack([item["action"].numpy() for item in items]))
        actions = torch.zeros(b, h, cfg.max_action_dim)
        actions[:, :, : action.shape[2]] = torch.from_numpy(action).float()
        # Valid = the robot's own dims on steps before the episode's end.
        action_mask = torch.zeros(b, h, cfg.max_action_dim, dtype=torch.bool)
        is_pad = torch.stack([item["action_is_pad"] for item in items])
        action_mask[:, :, : action.shape[2]] = ~is_pad.unsqueeze(-1)
        return {
            "images": images,
            "view_mask": view_mask,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "state": padded_state,
            "actions": actions,
            "action_mask": action_mask,
        }


def model_inputs(batch: dict, cfg: Evo1Config, device, augment_p: float = 0.0, generator=None,
                 augment_shift: float = 0.0):
    """A collated batch -> (obs, actions, action_mask) on `device`. Augmentation and the resize
    to the model's resolution run here, on the device, rather than in the CPU workers."""
    images = batch["images"].to(device, non_blocking=True)
    if augment_p > 0:
        images = augment(images, augment_p, generator, augment_shift)
    # Absent slots become zero images, as at inference (the model ignores them either way).
    pixels = normalize_pixels(images, cfg.image_size) * batch["view_mask"].to(device)[..., None, None, None]
    obs = {
        "pixel_values": pixels,
        "view_mask": batch["view_mask"].to(device),
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "state": batch["state"].to(device),
    }
    return obs, batch["actions"].to(device), batch["action_mask"].to(device)


class ResumableSampler(Sampler):
    """DistributedSampler's order (epoch e shuffled by seed + e, split across ranks) that can
    start part-way into an epoch: (epoch, position) is all a resumed run needs to continue."""

    def __init__(self, dataset, world_size: int, rank: int, seed: int):
        self.inner = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def start_at(self, epoch: int, skip: int) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip
