"""Evo-1: a vision-language backbone, an integration module and a cross-modulated DiT trained
by flow matching. Read top to bottom, this file follows the paper's method section.

Shapes: B batch, V view slots, L prompt tokens, D LM width (= head width), H chunk length,
A max action dim (24), S max state dim (24).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import InternVLModel

from .config import Evo1Config

TIME_TABLE_ROWS = 1000  # tau in [0, 1] is looked up at row int(tau * 999)


def sinusoidal_table(rows: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos table: even columns sin(pos * w_k), odd columns cos(pos * w_k)."""
    position = torch.arange(rows, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(rows, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


def time_index(tau: float) -> int:
    return min(int(tau * (TIME_TABLE_ROWS - 1)), TIME_TABLE_ROWS - 1)


# ---------------------------------------------------------------------------------------------
# 1. Vision-language backbone: InternVL3 with its language model cut to the first layers.
#    Every view becomes 256 tokens that replace the <IMG_CONTEXT> placeholders of the prompt;
#    the fused sequence goes through the truncated LM and its final RMSNorm: z_t.
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenLayout:
    """Where every token of a batch of prompts goes, decided from the prompts and view masks alone
    (no pixels): which views the ViT encodes, which placeholders their tokens fill, which tokens the
    LM keeps. Computing it is the only step of the encoder that needs the host; everything after it
    is a fixed sequence of tensor ops, so for one instruction and set of views it can be computed
    once and the rest captured as a CUDA graph."""

    views: torch.Tensor  # (n,) indices of the present views in pixel_values.flatten(0, 1)
    image_slots: torch.Tensor  # (n x tokens_per_view,) their placeholders in input_ids.flatten()
    order: torch.Tensor  # (B, L') original position of each kept token, kept tokens first
    z_mask: torch.Tensor  # (B, L') which of those rows are real tokens
    causal: torch.Tensor  # (B, 1, L', L') bool: causal among kept tokens; padding rows see themselves
    full: bool  # every row of z_mask is True (no key mask needed downstream)

    def to(self, device) -> "TokenLayout":
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{name: t.to(device) for name, t in tensors.items() if isinstance(t, torch.Tensor)})


def token_layout(
    view_mask: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    tokens_per_view: int,
) -> TokenLayout:
    """view_mask (B, V) bool; input_ids and attention_mask (B, L) right-padded prompts holding V
    image slots. Placeholder tokens of absent views are dropped (no ViT work for them either) while
    every kept token keeps its original position id: the encoder's result equals running the full
    padded sequence with those tokens masked out, at a fraction of the cost."""
    is_image = input_ids == image_token_id
    # Which view each placeholder belongs to, in prompt order.
    view_of_token = ((is_image.long().cumsum(1) - 1).clamp(min=0) // tokens_per_view).clamp(
        max=view_mask.shape[1] - 1
    )
    image_kept = is_image & view_mask.gather(1, view_of_token)
    keep = attention_mask.bool() & (~is_image | image_kept)
    views = view_mask.flatten().nonzero().squeeze(1)
    image_slots = image_kept.flatten().nonzero().squeeze(1)
    if image_slots.numel() != views.numel() * tokens_per_view:
        raise ValueError(
            f"the prompts hold {image_slots.numel()} image placeholders for {views.numel()} present views "
            f"x {tokens_per_view} tokens: prompts and view masks do not match"
        )
    # Compact each row to its kept tokens (stable order), remembering their positions.
    lengths = keep.sum(1)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, : int(lengths.max())]
    n = order.shape[1]
    z_mask = torch.arange(n, device=order.device) < lengths.unsqueeze(1)
    causal = torch.ones(n, n, dtype=torch.bool, device=order.device).tril() & z_mask[:, None, :]
    causal |= torch.eye(n, dtype=torch.bool, device=order.device)  # no row without a key
    return TokenLayout(views, image_slots, order, z_mask, causal.unsqueeze(1), bool(z_mask.all()))


def encode_observation(
    vlm: InternVLModel, pixel_values: torch.Tensor, input_ids: torch.Tensor, layout: TokenLayout
) -> torch.Tensor:
    """pixel_values (B, V, 3, P, P) normalised, input_ids (B, L), their layout (same device).
    Returns z (B, L', D), zero on the rows layout.z_mask marks as padding."""
    embeds = vlm.get_input_embeddings()(input_ids)
    if layout.views.numel():
        present = pixel_values.flatten(0, 1).index_select(0, layout.views)  # ordered (sample, view)
        features = vlm.get_image_features(pixel_values=present, return_dict=True).pooler_output
        flat = embeds.flatten(0, 1).index_copy(0, layout.image_slots, features.flatten(0, 1).to(embeds.dtype))
        embeds = flat.view_as(embeds)
    embeds = embeds.gather(1, layout.order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    # An explicit additive mask: transformers then builds none itself (its builder reads mask
    # values on the host, which a CUDA graph cannot do), and it reads the same under sdpa and eager.
    bias = torch.zeros(layout.causal.shape, dtype=embeds.dtype, device=embeds.device)
    bias = bias.masked_fill(~layout.causal, torch.finfo(embeds.dtype).min)
    z = vlm.language_model(inputs_embeds=embeds, attention_mask=bias, position_ids=layout.order).last_hidden_state
    # Rows past a sample's length are padding: zero them so nothing of them can leak.
    return z * layout.z_mask.unsqueeze(-1).to(z.dtype)


# ---------------------------------------------------------------------------------------------
# 2. Integration module: the context the action head attends to is z_t plus ONE state token.
# ---------------------------------------------------------------------------------------------


class StateEncoder(nn.Module):
    def __init__(self, state_dim: int, hidden: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(state_dim, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(state)))


# ---------------------------------------------------------------------------------------------
# 3. Cross-modulated DiT: action tokens attend to the context (no self-attention between
#    action tokens); the flow time enters additively before each block's FFN.
# ---------------------------------------------------------------------------------------------


class ActionEncoder(nn.Module):
    """Per-step MLP over the noisy action, with a sinusoidal position code over the horizon."""

    def __init__(self, action_dim: int, width: int, horizon: int):
        super().__init__()
        self.fc1 = nn.Linear(action_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.register_buffer("position", sinusoidal_table(horizon, width), persistent=False)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(actions)) + self.position.to(actions.dtype)
        return self.fc3(F.relu(self.fc2(x)))


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context is fixed during sampling: its keys/values are computed once per chunk."""
        return self.split(self.k_proj(context)), self.split(self.v_proj(context))

    def forward(self, x, keys, values, key_mask):
        q = self.split(self.q_proj(x))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, ffn_mult: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CrossAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, ffn_mult * width)
        self.fc2 = nn.Linear(ffn_mult * width, width)

    def forward(self, x, keys, values, key_mask, time_emb):
        x = x + self.attn(self.norm1(x), keys, values, key_mask)
        h = self.norm2(x) + time_emb.unsqueeze(1)
        return x + self.fc2(F.gelu(self.fc1(h)))


class ActionHead(nn.Module):
    def __init__(self, cfg: Evo1Config):
        super().__init__()
        w, h = cfg.head_width, cfg.chunk_length
        self.horizon, self.action_dim = h, cfg.max_action_dim
        self.state_encoder = StateEncoder(cfg.max_state_dim, cfg.state_hidden, w)
        self.action_encoder = ActionEncoder(cfg.max_action_dim, w, h)
        self.blocks = nn.ModuleList(
            DiTBlock(w, cfg.head_heads, cfg.head_ffn_mult) for _ in range(cfg.head_blocks)
        )
        self.norm_out = nn.LayerNorm(w)
        self.pool = nn.Linear(h * w, w)  # the whole chunk is read out jointly
        self.out_fc1 = nn.Linear(w, cfg.head_hidden)
        self.out_fc2 = nn.Linear(cfg.head_hidden, h * cfg.max_action_dim)
        self.register_buffer("time_table", sinusoidal_table(TIME_TABLE_ROWS, w), persistent=False)
        # Training only: recompute each block's activations in the backward pass instead of
        # storing them (less memory, one more forward per block).
        self.gradient_checkpointing = False

    def context_keys_values(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [block.attn.keys_values(context) for block in self.blocks]

    def velocity(self, noisy_actions, kv, key_mask, time_emb) -> torch.Tensor:
        """Predicted flow velocity (B, H, A) for noisy actions (B, H, A) at the given time."""
        x = self.action_encoder(noisy_actions)
        for block, (keys, values) in zip(self.blocks, kv):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, keys, values, key_mask, time_emb, use_reentrant=False)
            else:
                x = block(x, keys, values, key_mask, time_emb)
        x = self.pool(self.norm_out(x).flatten(1))
        return self.out_fc2(F.relu(self.out_fc1(x))).view(-1, self.horizon, self.action_dim)


# ---------------------------------------------------------------------------------------------
# 4. The whole policy and its flow-matching objective / Euler sampler.
# ---------------------------------------------------------------------------------------------


class Evo1(nn.Module):
    def __init__(self, cfg: Evo1Config):
        super().__init__()
        self.config = cfg
        self.vlm = InternVLModel(cfg.internvl_config())
        self.head = ActionHead(cfg)

    def layout(self, obs: dict) -> TokenLayout:
        return token_layout(obs["view_mask"], obs["input_ids"], obs["attention_mask"],
                            self.vlm.config.image_token_id, self.config.tokens_per_view)

    def context(self, obs: dict, layout: TokenLayout | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keys/values input of every head block: z_t + the state token, with its key mask (None
        when every key is valid). `layout` (on the model's device) if already known for obs."""
        layout = self.layout(obs) if layout is None else layout
        z = encode_observation(self.vlm, obs["pixel_values"], obs["input_ids"], layout)
        z = z.to(self.head.pool.weight.dtype)
        state_token = self.head.state_encoder(obs["state"].to(z.dtype)).unsqueeze(1)
        if self.config.context_padding == "reference":
            # Padded and masked tokens came out of flash-attention as zero rows, all attended.
            z = F.pad(z, (0, 0, 0, max(self.config.max_text_length - z.shape[1], 0)))
            return torch.cat([z, state_token], dim=1), None
        context = torch.cat([z, state_token], dim=1)
        if layout.full:
            return context, None
        return context, F.pad(layout.z_mask, (0, 1), value=True)

    def loss(self, obs: dict, actions: torch.Tensor, action_mask: torch.Tensor, generator=None):
        """Flow-matching loss. actions (B, H, A) normalised; action_mask (B, H, A) bool, False on
        padded dims and on steps past the episode end."""
        context, key_mask = self.context(obs)
        kv = self.head.context_keys_values(context)
        b, dtype, device = actions.shape[0], context.dtype, context.device
        mask = action_mask.to(dtype)
        tau = beta22(b, generator).clamp(0.02, 0.98).to(device=device, dtype=dtype)
        # Draw where the generator lives (a seeded CPU generator may drive a CUDA model).
        draw_device = generator.device if generator is not None else device
        noise = torch.rand(actions.shape, generator=generator, device=draw_device, dtype=dtype).to(device)
        noise = (noise * 2 - 1) * mask
        target = actions.to(dtype) * mask
        x_tau = (1 - tau.view(b, 1, 1)) * noise + tau.view(b, 1, 1) * target
        time_emb = self.head.time_table[(tau * (TIME_TABLE_ROWS - 1)).long().clamp(0, TIME_TABLE_ROWS - 1)]
        pred = self.head.velocity(x_tau, kv, key_mask, time_emb.to(dtype))
        # Masked MSE over the valid entries only (= mean over all entries x numel / mask_sum).
        err = ((pred.float() - (target - noise).float()) * mask.float()).pow(2)
        return err.sum() / mask.float().sum().clamp(min=1.0)

    @torch.no_grad()
    def sample(
        self,
        obs: dict,
        action_mask: torch.Tensor,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator=None,
    ) -> torch.Tensor:
        """Euler integration of the learned velocity from tau=0 (uniform noise) to tau=1.
        action_mask (B, A) bool; returns normalised actions (B, H, A) in float32, zero on masked dims."""
        context, key_mask = self.context(obs)
        kv = self.head.context_keys_values(context)
        b, dtype, device = context.shape[0], context.dtype, context.device
        shape = (b, self.config.chunk_length, self.config.max_action_dim)
        if noise is None:
            draw_device = generator.device if generator is not None else device
            noise = torch.rand(shape, generator=generator, device=draw_device, dtype=dtype).to(device) * 2 - 1
        mask = action_mask.to(device=device, dtype=dtype).unsqueeze(1)
        return self.denoise(kv, key_mask, noise.to(device=device, dtype=dtype), mask, num_steps)

    def denoise(self, kv, key_mask, noise, mask, num_steps: int | None = None, velocity=None,
                guidance=None) -> torch.Tensor:
        """The Euler loop alone, given the context keys/values: a fixed sequence of tensor ops
        with no host decisions, so it can be captured as one CUDA graph. `velocity` replaces
        head.velocity by an equivalent (a compiled one). `guidance(step_velocity, x, tau)`, if
        given, returns the velocity to integrate in place of step_velocity(x) (real-time chunking,
        runtime.rtc). The integration state stays in float32 whatever the model's dtype (32 small
        increments summed in bf16 would lose ~1e-2), and so does the result."""
        steps = int(num_steps or self.config.num_steps)
        velocity = velocity or self.head.velocity
        dt = 1.0 / steps
        mask32 = mask.float()
        x = noise.float() * mask32
        for i in range(steps):
            time_emb = self.head.time_table[time_index(i / steps)].to(noise.dtype).expand(x.shape[0], -1)

            def step_velocity(a, time_emb=time_emb):
                return velocity(a.to(noise.dtype), kv, key_mask, time_emb).float() * mask32

            if guidance is None:
                x = x + dt * step_velocity(x * mask32)
            else:
                x = x + dt * (guidance(step_velocity, x * mask32, i / steps) * mask32)
        return x * mask32


def beta22(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Beta(2, 2) draws that honour a seeded generator (torch's Beta takes none): the median of
    three independent uniforms is exactly Beta(2, 2) distributed."""
    return torch.rand(n, 3, generator=generator).median(dim=1).values
