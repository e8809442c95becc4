"""What the runtime needs from a policy: one action chunk per observation.

`ChunkPolicy` is the seam between the ROS nodes and the model: the inference node only calls
`predict_chunk`. The Evo-1 implementation lives beside it (`Evo1ChunkPolicy`).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class ChunkPolicy(Protocol):
    chunk_length: int  # H, actions per chunk
    action_dim: int  # valid action dims (xArm6: 6 joints + gripper = 7)
    num_views: int  # camera views the policy expects, in slot order

    def predict_chunk(
        self, images: Sequence[np.ndarray | None], state: np.ndarray, instruction: str
    ) -> np.ndarray:
        """images: per view slot an (H, W, 3) uint8 RGB frame or None (missing view);
        state: (action_dim,) joints (rad) + gripper drive; returns (chunk_length, action_dim)
        absolute joint targets (rad) + gripper drive, in robot units (de-normalised)."""
        ...
