"""Engine backends compute the plain model's function (tiny preset, CPU; CUDA graph on GPU)."""

import numpy as np
import pytest
import torch

from evo1_ros.model.build import build_model, xarm6_normalizer
from evo1_ros.model.checkpoint import save_checkpoint
from evo1_ros.model.processor import Evo1Processor, normalize_pixels
from evo1_ros.runtime.deployment import DeploymentConfig
from evo1_ros.runtime.engine import MAX_CACHED, Evo1Engine, export_onnx
from evo1_ros.runtime.policy import Evo1ChunkPolicy


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_model("evo1-tiny", seed=1)
    processor = Evo1Processor(model.config, tokenizer, xarm6_normalizer())
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), None, rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)]
    obs = processor.observation(frames, np.linspace(-1, 1, 7), "put the can in the box")
    noise = torch.rand(1, model.config.chunk_length, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return model.eval(), processor, obs, noise


def reference(model, processor, obs, noise):
    return model.sample(obs, processor.action_mask(7), noise=noise)


def test_torch_engine_equals_the_plain_model(tiny):
    model, processor, obs, noise = tiny
    out = Evo1Engine(model, processor).predict(obs, processor.action_mask(7), noise)
    torch.testing.assert_close(out, reference(model, processor, obs, noise), atol=1e-6, rtol=0)


def test_engine_resizes_uint8_frames_itself_as_the_processor_would(tiny):
    model, processor, _, noise = tiny
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), None,
              rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)]
    mask = processor.action_mask(7)
    raw = processor.observation(frames, np.zeros(7), "put the can in the box", resize=False)
    assert "pixel_values" not in raw and [tuple(i.shape) for i in raw["images"]] == [(1, 3, 90, 120), (1, 3, 112, 112),
                                                                                     (1, 3, 60, 80)]
    resized = processor.observation(frames, np.zeros(7), "put the can in the box")
    engine = Evo1Engine(model, processor)
    torch.testing.assert_close(engine.predict(raw, mask, noise), reference(model, processor, resized, noise),
                               atol=1e-6, rtol=0)


def test_layouts_are_cached_per_instruction_and_bounded(tiny):
    model, processor, obs, noise = tiny
    engine = Evo1Engine(model, processor)
    mask = processor.action_mask(7)
    frames = [np.full((90, 120, 3), 90, np.uint8), None, None]
    for i in range(MAX_CACHED + 2):  # a new instruction each time, as ~/instruction allows
        other = processor.observation(frames, np.zeros(7), f"put can {i} in the box")
        out = engine.predict(other, mask, noise)
        torch.testing.assert_close(out, reference(model, processor, other, noise), atol=1e-6, rtol=0)
    assert len(engine._layouts) == MAX_CACHED
    # The first instruction was evicted: asked again, it is laid out again, and still exact.
    first = processor.observation(frames, np.zeros(7), "put can 0 in the box")
    torch.testing.assert_close(engine.predict(first, mask, noise), reference(model, processor, first, noise),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("padding", ["mask", "reference"])
def test_onnx_engine_equals_the_plain_model(tiny, tmp_path, padding):
    model, processor, obs, noise = tiny
    model.config.context_padding = padding
    try:
        export_onnx(model, tmp_path)
        engine = Evo1Engine(model, processor, backend="onnx", onnx_dir=tmp_path)
        assert "CPUExecutionProvider" in engine.onnx.providers
        out = engine.predict(obs, processor.action_mask(7), noise)
        torch.testing.assert_close(out, reference(model, processor, obs, noise), atol=1e-4, rtol=0)
        # The graph is unrolled for the exported step count; another count is refused, not guessed.
        with pytest.raises(ValueError, match="export-onnx --steps 10"):
            Evo1Engine(model, processor, backend="onnx", onnx_dir=tmp_path, num_steps=10)
    finally:
        model.config.context_padding = "mask"


def test_policy_from_checkpoint_returns_robot_units(tiny, tmp_path):
    model, processor, _, _ = tiny
    save_checkpoint(tmp_path / "ck", model, processor.tokenizer, processor.normalizer)
    policy = Evo1ChunkPolicy.from_checkpoint(tmp_path / "ck")
    chunk = policy.predict_chunk([np.zeros((48, 64, 3), np.uint8)], np.zeros(7), "pick up the can")
    assert chunk.shape == (model.config.chunk_length, 7) and np.all(np.isfinite(chunk))
    # bounds normalisation maps [-1, 1] onto the joint limits: denormalised chunks stay inside.
    lo = np.array(processor.normalizer.stats["action"]["min"])
    hi = np.array(processor.normalizer.stats["action"]["max"])
    assert np.all(chunk >= lo - 3 * (hi - lo)) and np.all(chunk <= hi + 3 * (hi - lo))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph path needs a GPU")
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("compiled", [False, True], ids=["graph", "graph+compile"])
@pytest.mark.parametrize("head_kernels", ["torch", "triton"])
def test_cuda_graph_engine_equals_the_eager_fp32_model(tiny, dtype, atol, compiled, head_kernels):
    model, processor, obs, noise = tiny
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    gpu = type(model)(model.config).to("cuda", dtype)
    gpu.load_state_dict(model.state_dict())
    engine = Evo1Engine(gpu, processor, cuda_graph=True, torch_compile=compiled, head_kernels=head_kernels)
    mask = processor.action_mask(7)
    # The first call captures; later ones replay the graph on new pixels, state and noise.
    for step in range(3):
        new = dict(obs, pixel_values=obs["pixel_values"] + 0.3 * step, state=obs["state"] * (1 - 0.5 * step))
        expected = reference(model, processor, new, noise * (1 - 0.4 * step))
        out = engine.predict(new, mask, noise * (1 - 0.4 * step)).float().cpu()
        torch.testing.assert_close(out, expected, atol=atol, rtol=0)
    assert len(engine._graphs) == 1
    # uint8 frames, resized inside the graph: a graph of their own. The reference gets the same
    # frames resized on the GPU too (bicubic there may round a pixel to another level than on CPU).
    frames = [np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8), None, None]
    raw = processor.observation(frames, np.zeros(7), "put the can in the box", resize=False)
    resized = processor.observation(frames, np.zeros(7), "put the can in the box")
    resized["pixel_values"][0, 0] = normalize_pixels(raw["images"][0].cuda(), model.config.image_size)[0].cpu()
    torch.testing.assert_close(engine.predict(raw, mask, noise).float().cpu(),
                               reference(model, processor, resized, noise), atol=atol, rtol=0)
    assert len(engine._graphs) == 2
    # Another instruction is another token layout: another graph, also exact.
    other = processor.observation([np.full((90, 120, 3), 200, np.uint8)], np.zeros(7), "open the drawer")
    torch.testing.assert_close(engine.predict(other, mask, noise).float().cpu(),
                               reference(model, processor, other, noise), atol=atol, rtol=0)
    assert len(engine._graphs) == 3


def test_checkpoint_carries_how_its_chunks_are_executed(tiny, tmp_path):
    model, processor, _, _ = tiny
    save_checkpoint(tmp_path / "plain", model, processor.tokenizer, processor.normalizer)
    plain = Evo1ChunkPolicy.from_checkpoint(tmp_path / "plain")
    assert (plain.chunk_mode, plain.request_threshold) == (None, None)  # the node's defaults apply
    save_checkpoint(tmp_path / "ck", model, processor.tokenizer, processor.normalizer)
    DeploymentConfig(chunk_mode="open_loop", request_threshold=0.0).save(tmp_path / "ck")
    policy = Evo1ChunkPolicy.from_checkpoint(tmp_path / "ck")
    assert (policy.chunk_mode, policy.request_threshold) == ("open_loop", 0.0)
    with pytest.raises(ValueError, match="chunk_mode must be one of"):
        DeploymentConfig(chunk_mode="blend")
    with pytest.raises(ValueError, match="request_threshold must be in"):
        DeploymentConfig(request_threshold=1.5)


def test_noise_scale_sets_the_spread_of_the_starting_noise(tiny, tmp_path):
    model, processor, obs, noise = tiny
    mask = processor.action_mask(7)
    zero = reference(model, processor, obs, torch.zeros_like(noise))
    engine = Evo1Engine(model, processor, noise_scale=0.0)
    # Deterministic: every chunk is the integration from the noise's mean.
    torch.testing.assert_close(engine.predict(obs, mask), zero, atol=1e-6, rtol=0)
    torch.testing.assert_close(engine.predict(obs, mask), zero, atol=1e-6, rtol=0)
    # Scale s draws s x U[-1, 1] from the same generator state as the reference draw.
    torch.manual_seed(3)
    half = Evo1Engine(model, processor, noise_scale=0.5).predict(obs, mask)
    torch.manual_seed(3)
    draw = torch.rand(noise.shape) * 2 - 1
    torch.testing.assert_close(half, reference(model, processor, obs, draw * 0.5), atol=1e-6, rtol=0)
    assert not torch.allclose(half, zero, atol=1e-3)
    # The checkpoint's deployment settings carry its sampler's scale; the node's parameter may override it.
    save_checkpoint(tmp_path / "ck", model, processor.tokenizer, processor.normalizer)
    DeploymentConfig(noise_scale=0.0).save(tmp_path / "ck")
    assert Evo1ChunkPolicy.from_checkpoint(tmp_path / "ck").engine.noise_scale == 0.0
    assert Evo1ChunkPolicy.from_checkpoint(tmp_path / "ck", noise_scale=1.0).engine.noise_scale == 1.0
    with pytest.raises(ValueError, match="noise_scale"):
        Evo1Engine(model, processor, noise_scale=2.0)
