"""Real-time chunking (Black, Galliker, Levine 2025) for Evo-1's Euler sampler: the new chunk is
inpainted toward the plan it replaces while it is sampled, with no training.

While a chunk is computed the arm keeps executing the previous plan, so the new chunk's first d
steps (d = inference delay in action steps) are committed before it arrives, and the previous
plan still holds actions up to step H - s (s = execution horizon). Each Euler step pulls toward
them: at flow time tau (0 noise, 1 data) with state A_tau and velocity v, the predicted clean
chunk A_hat = A_tau + (1 - tau) v is compared with the previous plan Y, the error is weighted
per step by W (1 on the first d steps, decaying to 0 by H - s), and the velocity is corrected by
the vector-Jacobian product of that error through A_hat (the paper's eq. 2):

    v' = v + min(beta, (1 - tau) / (tau r_tau^2)) * [W (Y - A_hat)]^T dA_hat / dA_tau,
    r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2).

The product runs through the action head only: the context (VLM tokens + state token) and each
block's keys/values are computed once per chunk without gradients and stay fixed.

`Guidance` holds the per-chunk inputs as tensors (Y, W, beta) and its call is a fixed sequence of
tensor ops (no host reads, static shapes): the guided Euler loop is captured in the engine's CUDA
graph like the plain one, with these tensors among the graph's inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .chunking import RTCConfig


def prefix_weights(delay: int, prefix_length: int, horizon: int, config: RTCConfig) -> torch.Tensor:
    """W (horizon,): 1 on the first `delay` steps (committed), then decaying per `config.schedule`
    to 0 at horizon - execution_horizon, and 0 wherever the previous plan has no action
    (step >= prefix_length). The ramp over d <= i < end is c_i = (end - i) / (end - d + 1)
    (LINEAR), c_i (e^c_i - 1) / (e - 1) (EXP), 1 (ONES) or 0 (ZEROS)."""
    known = max(0, min(prefix_length, horizon))
    frozen = min(max(delay, 0), known)
    end = min(horizon - config.execution_horizon, known)
    i = torch.arange(horizon, dtype=torch.float32)
    c = ((end - i) / max(end - frozen + 1, 1)).clamp(0.0, 1.0)
    ramp = {"LINEAR": c, "EXP": c * torch.expm1(c) / (math.e - 1), "ONES": torch.ones(horizon),
            "ZEROS": torch.zeros(horizon)}[config.schedule]
    return torch.where(i < frozen, 1.0, torch.where(i < end, ramp, 0.0))


def guidance_weight(tau: float, max_weight: torch.Tensor) -> torch.Tensor:
    """min(beta, (1 - tau) / (tau r_tau^2)) = min(beta, (tau^2 + (1 - tau)^2) / (tau (1 - tau))):
    unbounded at tau = 0, so the clip decides there; at least 2 (tau = 1/2) elsewhere."""
    if tau <= 0.0:
        return max_weight
    return max_weight.clamp(max=(tau ** 2 + (1.0 - tau) ** 2) / (tau * (1.0 - tau)))


@dataclass
class Guidance:
    """The inputs of one guided chunk, shaped for the sampler; `build` makes them from the plan."""

    prefix: torch.Tensor  # (1, H, A) Y: the previous plan at the new chunk's steps, normalised, 0 past it
    weights: torch.Tensor  # (1, H, 1) W
    max_weight: torch.Tensor  # () beta

    @classmethod
    def build(cls, prefix: np.ndarray, delay: int, config: RTCConfig, horizon: int, action_dim: int) -> Guidance:
        """Guidance toward the previous plan.

        prefix (n, a): the previous plan's normalised actions at the new chunk's steps 0..n-1
        (n <= horizon, a <= action_dim valid dims); delay: d, the steps committed before the chunk lands."""
        prefix = np.asarray(prefix, dtype=np.float32)
        if prefix.ndim != 2 or prefix.shape[0] > horizon or prefix.shape[1] > action_dim:
            raise ValueError(f"RTC prefix must be (n <= {horizon}, a <= {action_dim}), got {prefix.shape}")
        if not np.isfinite(prefix).all():
            raise ValueError("RTC prefix has non-finite values")
        if config.execution_horizon > horizon:
            raise ValueError(f"execution_horizon {config.execution_horizon} is longer than the chunk ({horizon})")
        padded = torch.zeros(1, horizon, action_dim)
        padded[0, : prefix.shape[0], : prefix.shape[1]] = torch.from_numpy(prefix)
        weights = prefix_weights(int(delay), prefix.shape[0], horizon, config).view(1, horizon, 1)
        return cls(padded, weights, torch.tensor(float(config.max_guidance_weight)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __call__(self, velocity, x: torch.Tensor, tau: float) -> torch.Tensor:
        """The guided velocity at state x (B, H, A) float32 and flow time tau; `velocity(x)` is
        the head's (masked, float32) velocity there, with the context held fixed."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = velocity(x)
            clean = x + (1.0 - tau) * v
            error = self.weights * (self.prefix - clean.detach())
            (correction,) = torch.autograd.grad(clean, x, error)
        return v.detach() + guidance_weight(tau, self.max_weight) * correction
