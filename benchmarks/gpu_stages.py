"""Where the time of one evo1-0.77b chunk goes on a GPU: each stage captured alone as a CUDA graph.

    python benchmarks/gpu_stages.py --json OUT.json

bf16, random weights (same as benchmarks/inference.py), 640x480 frames resized to 448. For 1, 2
and 3 views: the ViT alone (graphed and eager), the whole context (ViT + LM + state token), and the
action head's Euler loop for 1 and 32 steps; for the last view count, the head and the context
with torch.compile. Medians of CUDA-event times over 40 replays, ms. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_stages.py needs a CUDA device", file=sys.stderr)
        return 1
    rows = {}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        model, processor = build("evo1-0.77b", "cuda", torch.bfloat16)
        for views in args.views:
            frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(views)]
            obs = {k: v.to("cuda") for k, v in processor.observation(frames, np.zeros(7), INSTRUCTION).items()}
            obs["pixel_values"] = obs["pixel_values"].to(torch.bfloat16)
            layout = model.layout(obs).to("cuda")
            present = obs["pixel_values"].flatten(0, 1).index_select(0, layout.views)
            vit = lambda: model.vlm.get_image_features(pixel_values=present, return_dict=True).pooler_output  # noqa: E731
            context = lambda: model.context(obs, layout)  # noqa: E731
            kv_input, key_mask = context()
            kv = model.head.context_keys_values(kv_input)
            noise = torch.rand(1, model.config.chunk_length, 24, device="cuda", dtype=torch.bfloat16) * 2 - 1
            mask = torch.ones(1, 1, 24, device="cuda", dtype=torch.bfloat16)
            rows[f"{views} views"] = {
                "tokens": int(layout.order.shape[1]),
                "vit_graph_ms": graphed_ms(vit),
                "vit_eager_ms": event_ms(vit, 20),
                "context_graph_ms": graphed_ms(context),
                "head_1_step_graph_ms": graphed_ms(lambda: model.denoise(kv, key_mask, noise, mask, 1)),
                "head_32_steps_graph_ms": graphed_ms(lambda: model.denoise(kv, key_mask, noise, mask, 32)),
            }
            print(f"{views} views: " + "  ".join(f"{k} {v:.2f}" for k, v in rows[f"{views} views"].items()), flush=True)
        if not args.no_compile:  # for the last view count
            velocity, compiled_context = torch.compile(model.head.velocity), torch.compile(model.context)
            rows["compiled"] = {
                "views": args.views[-1],
                "context_graph_ms": graphed_ms(lambda: compiled_context(obs, layout)),
                "head_32_steps_graph_ms": graphed_ms(
                    lambda: model.denoise(kv, key_mask, noise, mask, 32, velocity=velocity)),
            }
            print("compiled: " + "  ".join(f"{k} {v:.2f}" for k, v in rows["compiled"].items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                               "stages": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
