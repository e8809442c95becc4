"""Where the time of one evo1-0.77b chunk goes on a GPU: each stage captured alone as a CUDA graph.

    python benchmarks/gpu_stages.py --json OUT.json
    python benchmarks/gpu_stages.py --cpu-smoke --views 1 --json OUT.json   # evo1-tiny, each stage run once

bf16, random weights (same as benchmarks/inference.py), 640x480 frames resized to 448. For 1, 2
and 3 views: the ViT alone (graphed and eager), the whole context (ViT + LM + state token), and the
context with each SDPA backend preferred (math where it refuses), the action head's Euler loop for
1 and 32 steps, with torch's kernels and with the fused Triton head
(runtime/head_kernels.py); for the last view count, the head and the context with torch.compile,
and the kernels one Euler step launches for each head (torch.profiler, ungraphed: the launches of
a 2-step loop less those of a 1-step loop); and the fused head's equivalence at full size: its
chunk in fp32 and in bf16 against the torch head in fp32 from the same context. Medians of
CUDA-event times over 40 replays, ms.
--cpu-smoke runs every stage once on CPU at evo1-tiny (the fused head on Triton's interpreter):
a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import INSTRUCTION, build  # noqa: E402  benchmarks/inference.py, beside this script


def event_ms(fn, replays: int) -> float:
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed_ms(fn, replays: int = 40) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return event_ms(graph.replay, replays)


def attempt(measure):
    """measure(), or why it failed: a fused-head kernel that does not compile on this GPU costs
    its own rows, not the torch rows after it."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001  reported in the JSON and on stderr
        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}"


def once_ms(fn, replays: int = 1) -> float:
    """--cpu-smoke: run once, wall time (not a measurement)."""
    t = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t)


def kernels_per_step(make_loop) -> int:
    """CUDA kernels one more Euler step launches: make_loop(steps) returns the loop to run."""
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for steps in (1, 2):
        loop = make_loop(steps)
        loop()  # compile / autotune outside the profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            loop()
            torch.cuda.synchronize()
        counts.append(sum(1 for e in prof.events() if e.device_type.name == "CUDA"))
    return counts[1] - counts[0]


def equivalence(model, fused, context, key_mask, noise, mask, steps) -> dict:
    """Max |difference| of chunks from one context: the fused head (fp32 and the model's dtype) and
    the torch head in the model's dtype, each against the torch head in fp32 (no TF32)."""
    from evo1_ros.runtime.head_kernels import FusedActionHead

    torch.backends.cuda.matmul.allow_tf32 = False
    exact = copy.deepcopy(model.head).float()
    head = model.head

    def torch_head(h, dtype):
        model.head = h  # denoise reads model.head
        try:
            return model.denoise(h.context_keys_values(context.to(dtype)), key_mask, noise.to(dtype), mask.to(dtype),
                                 steps)
        finally:
            model.head = head

    reference = torch_head(exact, torch.float32)
    fused32 = FusedActionHead(exact, steps)(context.float(), key_mask, noise.float(), mask.float())
    dtype = head.pool.weight.dtype
    name = str(dtype).removeprefix("torch.")
    return {"fused_float32": (fused32 - reference).abs().max().item(),
            f"fused_{name}": (fused(context, key_mask, noise, mask) - reference).abs().max().item(),
            f"torch_{name}": (torch_head(head, dtype) - reference).abs().max().item()}


def shown(row: dict) -> str:
    return "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=32, help="Euler steps of the long head rows")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--cpu-smoke", action="store_true", help="evo1-tiny on CPU, every stage once")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    from evo1_ros.runtime.head_kernels import FusedActionHead  # after argparse: imports triton

    if args.cpu_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--cpu-smoke runs the Triton head on its interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
            return 1
        preset, device, dtype, timer, eager_timer = "evo1-tiny", "cpu", torch.float32, once_ms, once_ms
    elif torch.cuda.is_available():
        preset, device, dtype, timer, eager_timer = "evo1-0.77b", "cuda", torch.bfloat16, graphed_ms, event_ms
    else:
        print("gpu_stages.py needs a CUDA device (or --cpu-smoke)", file=sys.stderr)
        return 1
    steps = args.steps
    rows = {}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        model, processor = build(preset, device, dtype)
        fused = {n: FusedActionHead(model.head, n) for n in (1, 2, steps)}
        for views in args.views:
            frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(views)]
            obs = {k: v.to(device) for k, v in processor.observation(frames, np.zeros(7), INSTRUCTION).items()}
            obs["pixel_values"] = obs["pixel_values"].to(dtype)
            layout = model.layout(obs).to(device)
            present = obs["pixel_values"].flatten(0, 1).index_select(0, layout.views)
            vit = lambda: model.vlm.get_image_features(pixel_values=present, return_dict=True).pooler_output  # noqa: E731
            context = lambda: model.context(obs, layout)  # noqa: E731
            kv_input, key_mask = context()
            kv = model.head.context_keys_values(kv_input)
            h = model.config.chunk_length
            noise = torch.rand(1, h, 24, device=device, dtype=dtype) * 2 - 1
            mask = torch.ones(1, 1, 24, device=device, dtype=dtype)
            rows[f"{views} views"] = {
                "tokens": int(layout.order.shape[1]),
                "vit_graph_ms": timer(vit),
                "vit_eager_ms": eager_timer(vit, 20),
                "context_graph_ms": timer(context),
                "head_1_step_graph_ms": timer(lambda: model.denoise(kv, key_mask, noise, mask, 1)),
                f"head_{steps}_steps_graph_ms": timer(lambda: model.denoise(kv, key_mask, noise, mask, steps)),
                # The fused head computes its keys/values itself: timed from the context.
                "triton_head_1_step_graph_ms": attempt(
                    lambda: timer(lambda: fused[1](kv_input, key_mask, noise, mask))),
                f"triton_head_{steps}_steps_graph_ms": attempt(
                    lambda: timer(lambda: fused[steps](kv_input, key_mask, noise, mask))),
            }
            if device == "cuda":  # which SDPA kernel the ViT and LM would best run on
                from torch.nn.attention import SDPBackend, sdpa_kernel

                for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                SDPBackend.MATH):
                    def pinned(backend=backend):
                        with sdpa_kernel([backend, SDPBackend.MATH]):  # math where the backend refuses the mask
                            return context()
                    rows[f"{views} views"][f"context_graph_ms_sdpa_{backend.name.lower()}"] = timer(pinned)
            print(f"{views} views: {shown(rows[f'{views} views'])}", flush=True)
        if device == "cuda":
            kernels = {"triton": attempt(
                lambda: kernels_per_step(lambda n: lambda: fused[n](kv_input, key_mask, noise, mask)))}
        else:  # the interpreter launches nothing on a device: the wrapper's own count
            kernels = {"triton": fused[steps].launches_per_step}
        if device == "cuda":
            kernels["torch"] = kernels_per_step(lambda n: lambda: model.denoise(kv, key_mask, noise, mask, n))
        if not args.no_compile:  # for the last view count
            velocity, compiled_context = torch.compile(model.head.velocity), torch.compile(model.context)
            rows["compiled"] = {
                "views": args.views[-1],
                "context_graph_ms": timer(lambda: compiled_context(obs, layout)),
                f"head_{steps}_steps_graph_ms": timer(
                    lambda: model.denoise(kv, key_mask, noise, mask, steps, velocity=velocity)),
            }
            if device == "cuda":
                kernels["torch_compiled"] = kernels_per_step(
                    lambda n: lambda: model.denoise(kv, key_mask, noise, mask, n, velocity=velocity))
            print(f"compiled: {shown(rows['compiled'])}", flush=True)
        rows["kernels_per_step"] = kernels
        rows["equivalence_max_abs"] = attempt(
            lambda: equivalence(model, fused[steps], kv_input, key_mask, noise, mask, steps))
        print(f"fused head vs torch fp32, max |diff|: {rows['equivalence_max_abs']}", flush=True)
        print("kernels per Euler step: " + "  ".join(f"{k} {v}" for k, v in kernels.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "torch": torch.__version__,
            "preset": preset, "smoke": args.cpu_smoke, "steps": steps, "stages": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
