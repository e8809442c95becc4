"""Torch `Dataset` over an `evo1` dataset directory (written by `evo1-ros convert`).

One item per kept grid step k of every episode:

    {
        "images": {camera: uint8 tensor (3, S, S), RGB},   # meta["cameras"] order
        "state": float32 tensor (7,),                       # joint1..joint6 (rad), drive_joint
        "action": float32 tensor (horizon, 7),              # actions k .. k + horizon - 1
        "action_is_pad": bool tensor (horizon,),            # True past the episode's end, where
                                                            # the last action row is repeated
        "instruction": str,
        "episode_index": int,
        "frame_index": int,                                 # k
    }

Values are in robot units; normalisation (Evo-1's "bounds" to [-1, 1]) is the trainer's job, with the stats in
`norm_stats` (norm_stats.json). `torch.utils.data.default_collate` batches items as they are.

`max_image_lag` N > 0 pairs each state with camera frames drawn 0..N grid steps older (uniform, one
draw per item, clamped at the episode start). Data recorded in lockstep (sim demos) has frames and
state of the same instant; live cameras deliver frames tens of ms older than the joint state, and
a policy trained only on lockstep data has never seen that skew.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from evo1_ros.data.images import decode_frame


class Evo1Dataset(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, horizon: int = 50, max_image_lag: int = 0):
        if max_image_lag < 0:
            raise ValueError(f"max_image_lag must be >= 0, got {max_image_lag}")
        root = Path(root)
        self.max_image_lag = max_image_lag
        self.meta = json.loads((root / "meta.json").read_text())
        self.norm_stats = json.loads((root / "norm_stats.json").read_text())
        self.horizon = horizon
        self.cameras = self.meta["cameras"]
        # Whole episodes in memory: frames stay encoded, so this is about the size on disk.
        self.episodes = []
        for ep in self.meta["episodes"]:
            with np.load(root / ep["file"]) as npz:
                self.episodes.append({k: npz[k] for k in npz.files})
        self.index = [(e, k) for e, ep in enumerate(self.meta["episodes"])
                      for k in range(ep["length"])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, k = self.index[i]
        ep = self.episodes[e]
        steps = np.arange(k, k + self.horizon)
        pad = steps >= len(ep["action"])
        lag = int(torch.randint(0, self.max_image_lag + 1, ())) if self.max_image_lag else 0
        shown = max(k - lag, 0)  # the step whose frames go with step k's state
        images = {}
        for cam in self.cameras:
            start, end = ep[f"offsets.{cam}"][shown: shown + 2]
            frame = decode_frame(ep[f"frames.{cam}"][start:end])
            images[cam] = torch.from_numpy(frame).permute(2, 0, 1).contiguous()
        return {
            "images": images,
            "state": torch.from_numpy(ep["state"][k]),
            "action": torch.from_numpy(ep["action"][np.minimum(steps, len(ep["action"]) - 1)]),
            "action_is_pad": torch.from_numpy(pad),
            "instruction": self.meta["episodes"][e]["instruction"],
            "episode_index": e,
            "frame_index": k,
        }
