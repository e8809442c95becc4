"""Everything between raw observations and the model's tensors: prompt and tokens, 448 px
ImageNet-normalised views with their mask, and the "bounds" / mean-std normalisation of state
and action whose statistics travel with the checkpoint (`norm_stats.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import IMG_CONTEXT, IMG_END, IMG_START, Evo1Config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EPS = 1e-8  # as in the reference normaliser: keeps constant dims finite


def build_prompt(instruction: str, num_slots: int, tokens_per_view: int) -> str:
    views = "".join(
        f"Image-{i + 1}: {IMG_START}{IMG_CONTEXT * tokens_per_view}{IMG_END}\n" for i in range(num_slots)
    )
    return views + instruction.strip()


def resize_like_pil(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8-valued float images (N, 3, h, w) -> (N, 3, size, size) by antialiased bicubic
    resampling, rounded back to integer levels: what InternVL's PIL preprocessing computes."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255)


def normalize_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 RGB images (..., 3, h, w) -> model input (..., 3, size, size): resized, scaled to
    [0, 1] and ImageNet-normalised. Works on batches (training) and single frames alike."""
    lead = images.shape[:-3]
    x = resize_like_pil(images.reshape(-1, *images.shape[-3:]).float(), size) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).reshape(*lead, 3, size, size)


def frames_to_images(frames: Sequence[np.ndarray | None], cfg: Evo1Config) -> tuple[list, torch.Tensor]:
    """Per view slot an (h, w, 3) uint8 RGB frame or None -> per slot a (3, h, w) uint8 tensor or
    None, and view_mask (1, V)."""
    if len(frames) > cfg.max_views:
        raise ValueError(f"{len(frames)} views given; this model takes at most {cfg.max_views}")
    images = [None] * cfg.max_views
    for slot, frame in enumerate(frames):
        if frame is None:
            continue
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"view {slot}: expected (h, w, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
        images[slot] = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
    return images, torch.tensor([[image is not None for image in images]])


def images_to_pixels(frames: Sequence[np.ndarray | None], cfg: Evo1Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view slot an (h, w, 3) uint8 RGB frame or None -> pixel_values (1, V, 3, P, P) and
    view_mask (1, V). Absent views are zero images, masked out downstream."""
    images, mask = frames_to_images(frames, cfg)
    p = cfg.image_size
    pixels = torch.zeros(cfg.max_views, 3, p, p)
    for slot, image in enumerate(images):
        if image is not None:
            pixels[slot] = normalize_pixels(image, p)
    return pixels.unsqueeze(0), mask


# Normalisation modes: "bounds" is the reference's (clipped to [-1, 1]); the others are LeRobot's
# (NormalizationMode MIN_MAX, MEAN_STD, QUANTILES, QUANTILE10, IDENTITY), computed as LeRobot does.
# mode -> the statistics it needs.
MODES = {"bounds": ("min", "max"), "min_max": ("min", "max"), "mean_std": ("mean", "std"),
         "quantiles": ("q01", "q99"), "quantile10": ("q10", "q90"), "identity": ()}
KEYS = ("observation.state", "action")


@dataclass
class Normalizer:
    """Per-dim statistics of one robot's state and action (valid dims only, e.g. 7 for xArm6).

    `mode` applies to both keys unless a key's stats carry a "mode" of their own (LeRobot may
    normalise state and action differently):
    "bounds": x -> 2 (x - min) / (max - min + eps) - 1, clipped to [-1, 1] (the reference);
    "min_max" / "quantiles" / "quantile10": x -> 2 (x - lo) / (hi - lo) - 1 with lo, hi = min, max /
    q01, q99 / q10, q90 and eps for a zero range, not clipped (LeRobot);
    "mean_std": x -> (x - mean) / (std + eps); "identity": x.
    """

    robot: str
    mode: str
    stats: dict  # {"observation.state": {"min": [...], ..., optional "mode"}, "action": {...}}

    def __post_init__(self):
        for key in KEYS:
            if key not in self.stats:
                raise ValueError(f"norm stats for {self.robot!r} lack {key!r}")
            mode = self.mode_of(key)
            if mode not in MODES:
                raise ValueError(f"normalisation mode must be one of {sorted(MODES)}, got {mode!r} for {key}")
            missing = [n for n in MODES[mode] if n not in self.stats[key]]
            if missing:
                raise ValueError(f"norm stats {self.robot!r}/{key} lack {missing} needed by mode {mode!r}")
            if not any(isinstance(v, list) for v in self.stats[key].values()):
                raise ValueError(f"norm stats {self.robot!r}/{key} hold no per-dim statistics")

    def mode_of(self, key: str) -> str:
        return self.stats[key].get("mode", self.mode)

    def _get(self, key: str, name: str) -> np.ndarray:
        return np.asarray(self.stats[key][name], dtype=np.float64)

    def _dim(self, key: str) -> int:
        return len(next(v for v in self.stats[key].values() if isinstance(v, list)))

    @property
    def state_dim(self) -> int:
        return self._dim("observation.state")

    @property
    def action_dim(self) -> int:
        return self._dim("action")

    def _range(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = (self._get(key, name) for name in MODES[self.mode_of(key)])
        if self.mode_of(key) == "bounds":
            return lo, hi - lo + EPS
        return lo, np.where(hi - lo == 0, EPS, hi - lo)

    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        x, mode = np.asarray(x, dtype=np.float64), self.mode_of(key)
        if mode == "identity":
            return x
        if mode == "mean_std":
            return (x - self._get(key, "mean")) / (self._get(key, "std") + EPS)
        lo, span = self._range(key)
        y = 2.0 * (x - lo) / span - 1.0
        return np.clip(y, -1.0, 1.0) if mode == "bounds" else y

    def denormalize(self, key: str, y: np.ndarray) -> np.ndarray:
        y, mode = np.asarray(y, dtype=np.float64), self.mode_of(key)
        if mode == "identity":
            return y
        if mode == "mean_std":
            return y * self._get(key, "std") + self._get(key, "mean")
        lo, span = self._range(key)
        return (y + 1.0) / 2.0 * span + lo

    def to_json(self) -> dict:
        # Same layout as the reference norm_stats.json (one robot key) plus our "mode".
        return {self.robot: {"mode": self.mode, **self.stats}}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path, robot: str | None = None) -> "Normalizer":
        data = json.loads(Path(path).read_text())
        if robot is None:
            if len(data) != 1:
                raise ValueError(f"{path} holds stats for {sorted(data)}; name the robot to use")
            robot = next(iter(data))
        if robot not in data:
            raise ValueError(f"{path} has no stats for robot {robot!r} (has {sorted(data)})")
        entry = dict(data[robot])
        mode = entry.pop("mode", "bounds")  # reference files carry min/max only
        return cls(robot=robot, mode=mode, stats=entry)


class Evo1Processor:
    """Observation (frames, state, instruction) -> the model's input dict, and normalised action
    chunks back to robot units."""

    def __init__(self, cfg: Evo1Config, tokenizer, normalizer: Normalizer | None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # the model reads right-padded rows
        self.normalizer = normalizer
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        if self.image_token_id != cfg.vlm["image_token_id"]:
            raise ValueError(
                f"tokenizer maps {IMG_CONTEXT} to {self.image_token_id}, the model expects "
                f"{cfg.vlm['image_token_id']}: wrong tokenizer for this checkpoint"
            )
        self._tokens = lru_cache(maxsize=64)(self._tokenize_one)

    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(instructions) == 1:  # the live-inference case: one cached prompt per instruction
            ids = self._tokens(instructions[0])
            return ids.unsqueeze(0), torch.ones_like(ids).unsqueeze(0)
        prompts = [build_prompt(i, self.cfg.max_views, self.cfg.tokens_per_view) for i in instructions]
        enc = self.tokenizer(prompts, padding=True, return_tensors="pt")
        self._check_length(enc["input_ids"])
        return enc["input_ids"], enc["attention_mask"]

    def _tokenize_one(self, instruction: str) -> torch.Tensor:
        prompt = build_prompt(instruction, self.cfg.max_views, self.cfg.tokens_per_view)
        ids = torch.tensor(self.tokenizer(prompt)["input_ids"], dtype=torch.long)
        self._check_length(ids.unsqueeze(0))
        return ids

    def _check_length(self, ids: torch.Tensor) -> None:
        if ids.shape[1] > self.cfg.max_text_length:
            raise ValueError(
                f"prompt is {ids.shape[1]} tokens, over max_text_length={self.cfg.max_text_length}: "
                "shorten the instruction"
            )
        expected = self.cfg.max_views * self.cfg.tokens_per_view
        found = int((ids == self.image_token_id).sum(1).min())
        if found != expected:
            raise ValueError(f"prompt holds {found} image placeholders, expected {expected}")

    def state_vector(self, state: np.ndarray) -> torch.Tensor:
        """(state_dim,) robot units -> (1, max_state_dim) normalised, padded with state_pad_value."""
        state = np.asarray(state, dtype=np.float64)
        if not np.all(np.isfinite(state)):
            raise ValueError(f"state has non-finite values: {state}")
        if self.normalizer is not None:
            if state.shape[0] != self.normalizer.state_dim:
                raise ValueError(f"state has {state.shape[0]} dims, norm stats have {self.normalizer.state_dim}")
            state = self.normalizer.normalize("observation.state", state)
        if state.shape[0] > self.cfg.max_state_dim:
            raise ValueError(f"state has {state.shape[0]} dims, the model takes at most {self.cfg.max_state_dim}")
        out = torch.full((1, self.cfg.max_state_dim), float(self.cfg.state_pad_value))
        out[0, : state.shape[0]] = torch.from_numpy(state).float()
        return out

    def observation(self, frames: Sequence[np.ndarray | None], state: np.ndarray, instruction: str,
                    resize: bool = True) -> dict:
        """The model's inputs for one observation. resize=False leaves the views as uint8 frames,
        "images": per slot (1, 3, h, w), absent slots a zero image at the model's size, for
        `Evo1Engine` to resize and normalise on its device (inside its CUDA graph)."""
        if resize:
            pixel_values, view_mask = images_to_pixels(frames, self.cfg)
            views = {"pixel_values": pixel_values}
        else:
            images, view_mask = frames_to_images(frames, self.cfg)
            zero = torch.zeros(1, 3, self.cfg.image_size, self.cfg.image_size, dtype=torch.uint8)
            views = {"images": tuple(zero if i is None else i.unsqueeze(0) for i in images)}
        if not bool(view_mask.any()):
            raise ValueError("no camera view available: at least one image is needed")
        input_ids, attention_mask = self.tokenize([instruction])
        return {
            **views,
            "view_mask": view_mask,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "state": self.state_vector(state),
        }

    def action_mask(self, action_dim: int) -> torch.Tensor:
        mask = torch.zeros(1, self.cfg.max_action_dim, dtype=torch.bool)
        mask[0, :action_dim] = True
        return mask

    def actions_to_robot(self, actions: torch.Tensor, action_dim: int) -> np.ndarray:
        """(H, max_action_dim) normalised -> (H, action_dim) robot units."""
        a = actions[:, :action_dim].double().cpu().numpy()
        return self.normalizer.denormalize("action", a) if self.normalizer is not None else a
