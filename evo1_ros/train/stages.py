"""Evo-1's two training stages and the recipe's optimizer groups.

Stage 1 freezes the VLM and trains the integration module and action head from scratch, so the
randomly initialised head cannot wreck the pretrained vision-language features; stage 2 trains
everything end to end.
"""

from __future__ import annotations

import torch

from ..model.evo1 import Evo1


def set_stage(model: Evo1, stage: int) -> None:
    if stage not in (1, 2):
        raise ValueError(f"training stage must be 1 or 2, got {stage}")
    model.vlm.requires_grad_(stage == 2)
    model.head.requires_grad_(True)


def set_gradient_checkpointing(model: Evo1, enabled: bool) -> None:
    """Recompute activations in the backward pass instead of storing them: the ViT and LM layers
    (transformers' own mechanism) and the action head's blocks. Trades about a third more compute
    for activation memory; the gradients are the same."""
    vlm = model.vlm
    if hasattr(vlm, "activation_checkpointing_enable"):  # the name in newer transformers 5.x
        if enabled:
            vlm.activation_checkpointing_enable()  # non-reentrant by default
        else:
            vlm.activation_checkpointing_disable()
    elif enabled:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        vlm.gradient_checkpointing_disable()
    model.head.gradient_checkpointing = enabled


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed matrices and undecayed biases, norms and scales."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
