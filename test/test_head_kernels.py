"""The fused action head (runtime/head_kernels.py) computes the eager model's Euler loop.

Without a GPU the Triton kernels run on Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1
before triton is imported); on a GPU the same tests run the compiled kernels."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from evo1_ros.model.build import build_model, xarm6_normalizer  # noqa: E402
from evo1_ros.model.config import Evo1Config, tiny_vlm  # noqa: E402
from evo1_ros.model.evo1 import Evo1  # noqa: E402
from evo1_ros.model.processor import Evo1Processor  # noqa: E402
from evo1_ros.runtime.engine import Evo1Engine  # noqa: E402
from evo1_ros.runtime.head_kernels import FusedActionHead, Tiles, interpreted  # noqa: E402

DEVICE = "cpu" if interpreted() else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)


@pytest.fixture(scope="module")
def odd_head():
    """A small head whose shapes miss every tile edge: head dim 24 (not a power of two, like the
    0.77b model's 112), 20 action rows, 3 blocks."""
    vlm = tiny_vlm(vocab_size=64, image_token_id=5)
    vlm["text_config"].update(hidden_size=96, num_attention_heads=4)
    cfg = Evo1Config(vlm=vlm, chunk_length=20, head_width=96, head_heads=4, head_blocks=3, head_hidden=80,
                     state_hidden=64)
    torch.manual_seed(2)
    model = Evo1(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped term shows
        for name, p in model.head.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    context = torch.randn(2, 37, 96, generator=g)
    key_mask = torch.ones(2, 37, dtype=torch.bool)
    key_mask[1, 20:-1] = False  # sample 1: padding in the middle, its state token still valid
    noise = torch.rand(2, 20, 24, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 24)
    mask[:, :, :7] = 1
    return model, context, key_mask, noise, mask


def eager(model, context, key_mask, noise, mask, steps):
    with torch.no_grad():
        return model.denoise(model.head.context_keys_values(context), key_mask, noise, mask, steps)


# Tiles that leave partial blocks everywhere: 2 row blocks (the second partial), 2 chunks of
# the width 96, 2 key chunks, FFN / encoder / output-MLP slices, pool groups of 7 rows of 20.
SMALL = Tiles(m=16, k=64, n=64, l=32, f=64, pool_rows=7)


@pytest.mark.parametrize("masked, steps", [(True, 2), (False, 1)], ids=["key-mask", "all-keys"])
def test_fused_head_equals_eager_fp32(odd_head, masked, steps):
    model, context, key_mask, noise, mask = odd_head
    key_mask = key_mask if masked else None
    expected = eager(model, context, key_mask, noise, mask, steps)
    head = model.head.to(DEVICE)
    try:
        fused = FusedActionHead(head, steps, tiles=SMALL)
        out = fused(context.to(DEVICE), None if key_mask is None else key_mask.to(DEVICE), noise.to(DEVICE),
                    mask.to(DEVICE))
    finally:
        model.head.cpu()
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=0)
    assert torch.all(out[..., 7:] == 0)  # masked action dims stay exactly zero
    # One launch per kernel, 3 + 2 per block per step: 19 per step for the 8-block model.
    assert fused.launches == steps * fused.launches_per_step == steps * (3 + 2 * 3)


def test_fused_head_bf16_is_within_2e2_of_eager_fp32(odd_head):
    model, context, key_mask, noise, mask = odd_head
    expected = eager(model, context, key_mask, noise, mask, 2)
    low = copy.deepcopy(model).to(DEVICE, torch.bfloat16)
    out = FusedActionHead(low.head, 2)(context.to(DEVICE, torch.bfloat16), key_mask.to(DEVICE),
                                       noise.to(DEVICE, torch.bfloat16), mask.to(DEVICE, torch.bfloat16))
    assert out.dtype == torch.float32  # the Euler state stays fp32, as in the torch path
    torch.testing.assert_close(out.cpu(), expected, atol=2e-2, rtol=0)


def test_engine_with_triton_head_equals_the_plain_model():
    model, tokenizer = build_model("evo1-tiny", seed=1)
    processor = Evo1Processor(model.config, tokenizer, xarm6_normalizer())
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), None, None]
    obs = processor.observation(frames, np.linspace(-1, 1, 7), "put the can in the box")
    noise = torch.rand(1, model.config.chunk_length, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = processor.action_mask(7)
    expected = model.eval().sample(obs, mask, noise=noise, num_steps=2)
    engine = Evo1Engine(model.to(DEVICE), processor, num_steps=2, head_kernels="triton")
    torch.testing.assert_close(engine.predict(obs, mask, noise).cpu(), expected, atol=1e-4, rtol=0)


def test_triton_head_refusals(odd_head, monkeypatch):
    model, tokenizer = build_model("evo1-tiny", seed=1)
    processor = Evo1Processor(model.config, tokenizer, xarm6_normalizer())
    with pytest.raises(ValueError, match="head_kernels must be one of"):
        Evo1Engine(model, processor, head_kernels="cuda")
    with pytest.raises(ValueError, match="backend 'onnx' has its own"):
        Evo1Engine(model, processor, backend="onnx", head_kernels="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FusedActionHead(model.head, 2)
    with pytest.raises(ValueError, match="at least 1 step"):
        FusedActionHead(model.head, 0)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        FusedActionHead(copy.deepcopy(model.head).double(), 2)
