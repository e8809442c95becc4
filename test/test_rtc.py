"""Real-time chunking in the sampler (evo1_ros.runtime.rtc) and at the policy seam; latency injection.

The model is the tiny preset with random weights: its chunks depend on the observation, which is
all these tests need (the guidance is training-free)."""

import math
import time

import numpy as np
import pytest
import torch

from evo1_ros.model.build import build_model, xarm6_normalizer
from evo1_ros.model.processor import Evo1Processor
from evo1_ros.runtime.chunking import RTC_SCHEDULES, RTCConfig, RTCInputs
from evo1_ros.runtime.engine import Evo1Engine, export_onnx
from evo1_ros.runtime.deployment import DeploymentConfig
from evo1_ros.runtime.policy import DelayedPolicy, Evo1ChunkPolicy, rtc_refusal
from evo1_ros.runtime.rtc import Guidance, guidance_weight, prefix_weights
from evo1_ros.sim.metrics import TimedPolicy

VALID = 7  # xArm6: 6 joints + gripper


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_model("evo1-tiny", seed=1)
    processor = Evo1Processor(model.config, tokenizer, xarm6_normalizer())

    def observation(seed, state):
        frame = np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)
        return processor.observation([frame, None, None], state, "put the can in the box")

    old, new = observation(0, np.linspace(-1, 1, VALID)), observation(5, np.linspace(1, -1, VALID))
    noise = torch.rand(1, model.config.chunk_length, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return model.eval(), processor, old, new, noise


def plain(model, processor, obs, noise):
    return model.sample(obs, processor.action_mask(VALID), noise=noise)


@pytest.mark.parametrize("schedule", RTC_SCHEDULES)
def test_weight_zero_guidance_is_the_plain_sampler(tiny, schedule):
    model, processor, _, new, noise = tiny
    h = model.config.chunk_length
    prefix = np.random.default_rng(1).uniform(-1, 1, (h - 4, VALID))
    guidance = Guidance.build(prefix, 3, RTCConfig(4, 0.0, schedule), h, 24)
    engine = Evo1Engine(model, processor, num_steps=8)  # any step count: 8 keeps the test short
    with torch.inference_mode():  # a caller's inference mode does not stop the guidance's gradient
        out = engine.predict(new, processor.action_mask(VALID), noise, guidance=guidance)
    expected = model.sample(new, processor.action_mask(VALID), noise=noise, num_steps=8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_committed_steps_follow_the_previous_chunk_and_the_rest_the_new_observation(tiny):
    model, processor, old, new, noise = tiny
    h, s, d = model.config.chunk_length, 4, 3
    engine, mask = Evo1Engine(model, processor), processor.action_mask(VALID)
    previous = plain(model, processor, old, noise)[0, :, :VALID]
    free = plain(model, processor, new, noise)[0, :, :VALID]  # the new observation, unguided
    prefix = previous[s:]  # what the previous chunk still plans, from the new chunk's step 0 on
    errors = []
    for beta in (0.0, 1.0, 3.0, 10.0):
        guidance = Guidance.build(prefix.numpy(), d, RTCConfig(s, beta, "EXP"), h, 24)
        out = engine.predict(new, mask, noise, guidance=guidance)[0, :, :VALID]
        errors.append(float((out[:d] - prefix[:d]).abs().max()))
        tail = out[h - s:]  # W = 0 there: nothing of the previous chunk is asked for
        # ...and it stays the new observation's: much nearer its own free chunk than the old one's.
        assert float((tail - free[h - s:]).abs().max()) < 0.25 * float((free[h - s:] - previous[h - s:]).abs().max())
    # The committed steps close in on the previous chunk as the clip on the weight is raised.
    assert errors[0] > 0.5 and all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.02 * errors[0], errors


def test_guidance_is_the_papers_correction_through_the_velocity():
    # A linear velocity field v(x) = x M + c: the vector-Jacobian product of W (Y - A_hat) through
    # A_hat = x + (1 - tau) v is e + (1 - tau) e M^T, e = W (Y - A_hat), so each term can be checked.
    gen = torch.Generator().manual_seed(0)
    h, a = 6, 3
    m, c = torch.randn(a, a, generator=gen), torch.randn(a, generator=gen)
    x, target = torch.randn(1, h, a, generator=gen), torch.randn(1, h, a, generator=gen)
    weights = torch.linspace(1, 0, h).view(1, h, 1)
    guidance = Guidance(target, weights, torch.tensor(10.0))
    for tau, expected_weight in [(0.0, 10.0), (0.5, 2.0), (0.9, 0.82 / 0.09), (0.95, 10.0)]:
        v = x @ m + c
        e = weights * (target - (x + (1 - tau) * v))
        expected = v + expected_weight * (e + (1 - tau) * e @ m.T)
        torch.testing.assert_close(guidance(lambda y: y @ m + c, x, tau), expected, atol=1e-5, rtol=1e-5)
        assert math.isclose(float(guidance_weight(tau, torch.tensor(10.0))), expected_weight, rel_tol=1e-6)


def test_prefix_weights_follow_each_schedule():
    h = 10
    lin = [1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5, 0, 0, 0, 0]  # d = 2, H - s = 6: c_i = (6 - i) / 5
    expected = {"LINEAR": lin, "EXP": [w if i < 2 else w * math.expm1(w) / (math.e - 1) for i, w in enumerate(lin)],
                "ONES": [1] * 6 + [0] * 4, "ZEROS": [1, 1] + [0] * 8}
    for schedule, weights in expected.items():
        got = prefix_weights(2, 8, h, RTCConfig(4, 10.0, schedule))
        torch.testing.assert_close(got, torch.tensor(weights, dtype=torch.float32), atol=1e-6, rtol=0)
    # Nothing is asked for where the previous plan has no action, committed or not.
    short = prefix_weights(5, 3, h, RTCConfig(4, 10.0, "ONES"))
    torch.testing.assert_close(short, torch.tensor([1.0, 1, 1] + [0] * 7))
    # A delay past H - s: the committed steps stay pinned, no ramp follows.
    late = prefix_weights(7, 10, h, RTCConfig(4, 10.0, "LINEAR"))
    torch.testing.assert_close(late, torch.tensor([1.0] * 7 + [0] * 3))


def test_wrong_guidance_inputs_are_refused():
    cfg = RTCConfig(4, 10.0, "EXP")
    with pytest.raises(ValueError, match="prefix must be"):
        Guidance.build(np.zeros((17, VALID)), 2, cfg, 16, 24)  # longer than the chunk
    with pytest.raises(ValueError, match="prefix must be"):
        Guidance.build(np.zeros((4, 25)), 2, cfg, 16, 24)  # more dims than the model has
    with pytest.raises(ValueError, match="non-finite"):
        Guidance.build(np.full((4, VALID), np.nan), 2, cfg, 16, 24)
    with pytest.raises(ValueError, match="longer than the chunk"):
        Guidance.build(np.zeros((4, VALID)), 2, RTCConfig(20), 16, 24)


def test_onnx_backend_refuses_rtc_with_a_reason(tiny, tmp_path):
    model, processor = tiny[:2]
    export_onnx(model, tmp_path, num_steps=1)
    engine = Evo1Engine(model, processor, backend="onnx", onnx_dir=tmp_path, num_steps=1)
    policy = Evo1ChunkPolicy(engine, DeploymentConfig())
    assert "onnx backend cannot run real-time chunking" in rtc_refusal(policy)
    rtc = RTCInputs(np.zeros((8, VALID)), 2, RTCConfig())
    with pytest.raises(ValueError, match="onnx backend cannot run real-time chunking"):
        policy.predict_chunk([np.zeros((48, 64, 3), np.uint8)], np.zeros(VALID), "pick up the can", rtc=rtc)
    # Plain chunks still work.
    assert policy.predict_chunk([np.zeros((48, 64, 3), np.uint8)], np.zeros(VALID), "pick up the can").shape == (16, 7)
    assert rtc_refusal(Evo1ChunkPolicy(Evo1Engine(model, processor), DeploymentConfig())) is None
    assert "takes no real-time chunking inputs" in rtc_refusal(object())


def test_policy_takes_the_previous_plan_in_robot_units(tiny):
    model, processor = tiny[:2]
    model.config.noise_scale = 0.0  # deterministic chunks
    try:
        policy = Evo1ChunkPolicy(Evo1Engine(model, processor), DeploymentConfig())
    finally:
        model.config.noise_scale = 1.0
    frames = [np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)]
    previous = policy.predict_chunk(frames, np.zeros(VALID), "pick up the can")  # robot units
    # Robot units -> model space is the inverse of the policy's own way out, within the bounds the
    # normalisation keeps (a random model may sample past them; the driver clips those anyway).
    stats = processor.normalizer.stats["action"]
    previous = np.clip(previous, stats["min"], stats["max"])
    back = processor.actions_to_robot(torch.from_numpy(policy.normalised_actions(previous)).float(), VALID)
    np.testing.assert_allclose(back, previous, atol=1e-5)
    s, d = 4, 3
    rtc = RTCInputs(previous[s:], d, RTCConfig(s, 10.0, "EXP"))
    other = [np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)]
    guided = policy.predict_chunk(other, np.full(VALID, 0.3), "pick up the can", rtc=rtc)
    unguided = policy.predict_chunk(other, np.full(VALID, 0.3), "pick up the can")
    span = np.array(processor.normalizer.stats["action"]["max"]) - np.array(processor.normalizer.stats["action"]["min"])
    assert np.all(np.abs(guided[:d] - previous[s:s + d]) < 0.01 * span)
    assert np.abs(unguided[:d] - previous[s:s + d]).max() > 10 * np.abs(guided[:d] - previous[s:s + d]).max()
    with pytest.raises(ValueError, match="actions must be"):
        policy.predict_chunk(other, np.zeros(VALID), "pick up the can", rtc=RTCInputs(previous[:, :6], d, rtc.config))


def test_delayed_policy_adds_its_latency_and_passes_everything_through(tiny):
    model, processor = tiny[:2]
    # deterministic, and few steps: a short test
    policy = Evo1ChunkPolicy(Evo1Engine(model, processor, num_steps=4, noise_scale=0.0), DeploymentConfig())
    delayed = DelayedPolicy(policy, extra_latency_ms=150)
    assert (delayed.chunk_length, delayed.action_dim, delayed.rtc_refusal) == (16, VALID, None)
    frames = [np.zeros((48, 64, 3), np.uint8)]
    timed = TimedPolicy(policy)  # the wrapped policy's own time, to tell the added time apart
    start = time.perf_counter()
    chunk = DelayedPolicy(timed, extra_latency_ms=150).predict_chunk(frames, np.zeros(VALID), "pick up the can")
    assert time.perf_counter() - start - timed.latencies[-1] >= 0.150
    np.testing.assert_allclose(chunk, policy.predict_chunk(frames, np.zeros(VALID), "pick up the can"))
    rtc = RTCInputs(chunk[4:], 3, RTCConfig(4, 10.0, "EXP"))
    np.testing.assert_allclose(delayed.predict_chunk(frames, np.ones(VALID), "pick up the can", rtc=rtc),
                               policy.predict_chunk(frames, np.ones(VALID), "pick up the can", rtc=rtc), atol=1e-6)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="extra latency"):
            DelayedPolicy(policy, bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph path needs a GPU")
def test_guided_chunk_in_the_cuda_graph_equals_the_eager_fp32_one(tiny):
    model, processor, old, new, noise = tiny
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    gpu = type(model)(model.config).to("cuda")
    gpu.load_state_dict(model.state_dict())
    graphed, eager = Evo1Engine(gpu, processor, cuda_graph=True), Evo1Engine(model, processor)
    mask, h = processor.action_mask(VALID), model.config.chunk_length
    previous = plain(model, processor, old, noise)[0, :, :VALID]
    # The first call captures; later ones replay it with another previous plan and delay.
    for step, (s, d) in enumerate([(4, 3), (6, 1), (4, 5)]):
        guidance = Guidance.build(previous[s:].numpy() * (1 - 0.3 * step), d, RTCConfig(s, 10.0, "EXP"), h, 24)
        torch.testing.assert_close(graphed.predict(new, mask, noise, guidance=guidance).cpu(),
                                   eager.predict(new, mask, noise, guidance=guidance), atol=1e-4, rtol=0)
    torch.testing.assert_close(graphed.predict(new, mask, noise).cpu(), plain(model, processor, new, noise),
                               atol=1e-4, rtol=0)
    assert len(graphed._graphs) == 2  # one layout: a guided and a plain graph
