"""What the runtime needs from a policy: one action chunk per observation.

`ChunkPolicy` is the seam between the ROS nodes and the model: the inference node only calls
`predict_chunk`. The Evo-1 implementation lives beside it (`Evo1ChunkPolicy`).
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence

import numpy as np


class ChunkPolicy(Protocol):
    chunk_length: int  # H, actions per chunk
    action_dim: int  # valid action dims (xArm6: 6 joints + gripper = 7)
    num_views: int  # camera views the policy expects, in slot order
    action_rate_hz: float  # how far apart a chunk's actions are (1 / period); 0 = unknown
    # How its chunks should be executed where the inference node's parameters leave it open
    # (runtime.chunking); a policy may leave these out or set None for the node's defaults.
    chunk_mode: str | None
    request_threshold: float | None

    def predict_chunk(
        self, images: Sequence[np.ndarray | None], state: np.ndarray, instruction: str
    ) -> np.ndarray:
        """images: per view slot an (H, W, 3) uint8 RGB frame or None (missing view);
        state: (action_dim,) joints (rad) + gripper drive; returns (chunk_length, action_dim)
        absolute joint targets (rad) + gripper drive, in robot units (de-normalised)."""
        ...


class Evo1ChunkPolicy:
    """Evo-1 behind the `ChunkPolicy` seam: observation in, de-normalised action chunk out."""

    def __init__(self, engine, action_dim: int):
        self.engine = engine
        self.processor = engine.processor
        self.action_dim = action_dim
        self.chunk_length = engine.model.config.chunk_length
        self.num_views = engine.model.config.max_views
        self.action_rate_hz = engine.model.config.action_rate_hz
        self.chunk_mode = engine.model.config.chunk_mode
        self.request_threshold = engine.model.config.request_threshold
        self._action_mask = self.processor.action_mask(action_dim)

    @classmethod
    def from_checkpoint(
        cls,
        path,
        device: str = "cpu",
        dtype: str | None = None,
        num_steps: int | None = None,
        backend: str = "torch",
        onnx_dir=None,
        cuda_graph: bool = True,
        torch_compile: bool = False,
        noise_scale: float | None = None,
        head_kernels: str = "torch",
    ):
        import torch

        from ..model.checkpoint import load_checkpoint
        from .engine import Evo1Engine

        torch_dtype = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in torch_dtype:
            raise ValueError(f"dtype must be one of float32, bfloat16, float16; got {dtype!r}")
        if torch.device(device).type == "cpu":
            # The policy shares the machine with the servo loop, cameras (and in sim, rendering and
            # physics); torch's default of one spinning thread per core starves them and itself
            # (on 2 loaded cores: seconds per tiny chunk instead of 0.25 s). Half the cores.
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        model, processor = load_checkpoint(path, device=device, dtype=torch_dtype[dtype])
        if processor.normalizer is None:
            raise ValueError(f"{path} has no norm_stats.json: cannot map actions to robot units")
        engine = Evo1Engine(model, processor, backend=backend, onnx_dir=onnx_dir, cuda_graph=cuda_graph,
                            torch_compile=torch_compile, num_steps=num_steps, noise_scale=noise_scale,
                            head_kernels=head_kernels)
        return cls(engine, processor.normalizer.action_dim)

    def predict_chunk(self, images, state, instruction):
        # On a GPU the engine resizes the frames itself (inside its CUDA graph): far cheaper than here.
        obs = self.processor.observation(images, state, instruction, resize=self.engine.device.type == "cpu")
        actions = self.engine.predict(obs, self._action_mask)
        return self.processor.actions_to_robot(actions[0].float(), self.action_dim)
