"""Per-chunk inference latency: the reference server's path vs our engine (vs LeRobot when importable).

    python benchmarks/inference.py                      # evo1-tiny on CPU (+ evo1-0.77b on CUDA if present)
    python benchmarks/inference.py --presets evo1-0.77b --views 2 --steps 32 --json out.json

Same random weights and the same inputs for every path in one run:
  (a) naive    - what the reference server does: all 3 view slots through the ViT, the prompt
                 padded to 1024 tokens, context keys/values recomputed at every Euler step, eager.
  (b) engine   - ours (`Evo1Engine`): backend torch (CUDA graph on GPU), with the fused Triton
                 action head (`head_kernels="triton"`; on CPU only under TRITON_INTERPRET=1, as a
                 smoke test), and onnx.
  frames-*     - the fastest engine timed from 640x480 camera frames, resized by the processor on
                 the host or by the engine on its device (inside the CUDA graph).
  (c) lerobot  - LeRobot 0.6.1 Evo1Policy through shared/tools/lerobot_evo1_probe.py, when importable.
Prints a table (p50/p99 ms, chunks/s, peak GPU memory) and writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model  # noqa: E402  benchmarks/machine.py, beside this script

from evo1_ros.model.build import xarm6_normalizer  # noqa: E402
from evo1_ros.model.config import IMG_CONTEXT, preset  # noqa: E402
from evo1_ros.model.evo1 import Evo1, time_index  # noqa: E402
from evo1_ros.model.processor import Evo1Processor  # noqa: E402
from evo1_ros.model.tokenizer import build_tiny_tokenizer  # noqa: E402
from evo1_ros.runtime.engine import Evo1Engine, export_onnx  # noqa: E402

INSTRUCTION = "pick up the can and put it in the white box"


def build(preset_name: str, device: str, dtype: torch.dtype):
    tokenizer = build_tiny_tokenizer()  # ids only matter through the embedding table
    image_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    cfg = preset(preset_name, vocab_size=len(tokenizer), image_token_id=image_id)
    if preset_name == "evo1-0.77b":
        cfg.vlm["image_token_id"] = image_id
    torch.manual_seed(0)
    model = Evo1(cfg).to(device=device, dtype=dtype).eval()
    return model, Evo1Processor(cfg, tokenizer, xarm6_normalizer())


def naive_chunk(model: Evo1, obs: dict, mask: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference server's computation, for timing: 3 ViT slots, 1024-token prompt, K/V per step."""
    cfg = model.config
    ids, attention = obs["input_ids"], obs["attention_mask"]
    pad = cfg.max_text_length - ids.shape[1]
    ids = F.pad(ids, (0, pad), value=0)
    is_image = ids == cfg.vlm["image_token_id"]
    slot = ((is_image.cumsum(1) - 1).clamp(min=0) // cfg.tokens_per_view).clamp(max=cfg.max_views - 1)
    attention = F.pad(attention, (0, pad)) * ~(is_image & ~obs["view_mask"].gather(1, slot))
    hidden = model.vlm(input_ids=ids, pixel_values=obs["pixel_values"][0], attention_mask=attention).last_hidden_state
    z = hidden * attention.unsqueeze(-1).to(hidden.dtype)  # flash-attn's zero pad rows
    context = torch.cat([z, model.head.state_encoder(obs["state"].to(z.dtype)).unsqueeze(1)], dim=1)
    m = mask.unsqueeze(1).to(z.dtype)
    x = noise * m
    for i in range(steps):
        kv = model.head.context_keys_values(context)  # recomputed every step, as the reference does
        emb = model.head.time_table[time_index(i / steps)].to(z.dtype).expand(1, -1)
        x = x + (1.0 / steps) * model.head.velocity(x * m, kv, None, emb) * m
    return x * m


def timed(make, iters: int, device: str) -> dict:
    """Times one path: make() builds it (an engine, its graphs) and returns the per-chunk call.
    Peak GPU memory counts everything the path holds while it runs, the weights included, and
    nothing a previous path left behind."""
    if device == "cuda":
        gc.collect()  # engines of earlier paths hold graph pools until collected
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn = make()
    for _ in range(3):  # the first call captures the CUDA graph (and compiles, if asked)
        fn()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    p50 = statistics.median(times)
    return {
        "p50_ms": 1e3 * p50,
        "p99_ms": 1e3 * times[min(len(times) - 1, int(0.99 * len(times)))],
        "chunks_per_s": 1.0 / p50,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }


def lerobot_row(views: int, steps: int, iters: int, probe: str | None) -> dict | None:
    """LeRobot's Evo1Policy timed by the shared probe (shared/tools/lerobot_evo1_probe.py, random
    weights, no hub; or the copy `probe` names) in a subprocess, or None when lerobot or the probe
    is not here."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parents[1]
    candidates = [Path(probe)] if probe else [base / "shared" / "tools" / "lerobot_evo1_probe.py"
                                              for base in (root, root.parent)]
    probe_file = next((p for p in candidates if p.is_file()), None)
    if importlib.util.find_spec("lerobot") is None or probe_file is None:
        return None
    out = Path(tempfile.mkdtemp()) / "lerobot.json"
    subprocess.run([sys.executable, str(probe_file), "--views", str(views),
                    "--steps", str(steps), "--iters", str(iters), "--out", str(out)], check=True)
    r = json.loads(out.read_text())
    return {"p50_ms": r["p50_ms"], "p99_ms": r["p90_ms"], "chunks_per_s": 1e3 / r["p50_ms"],
            "peak_gib": r["peak_gib"], "note": "probe reports p90, shown as p99"}


def engine_paths(device: str) -> dict:
    """Name -> Evo1Engine keyword arguments of every engine configuration timed on this device.
    On a GPU the onnx backend is timed only with onnxruntime's CUDA provider: its CPU provider
    would time the CPU."""
    import os

    import onnxruntime

    paths = {"engine-torch": {}}
    if device == "cuda":
        paths = {"engine-eager": {"cuda_graph": False}, **paths,
                 "engine-compiled": {"torch_compile": True},
                 "engine-triton": {"head_kernels": "triton"},
                 "engine-compiled-triton": {"torch_compile": True, "head_kernels": "triton"}}
    elif os.environ.get("TRITON_INTERPRET") == "1":
        paths["engine-triton"] = {"head_kernels": "triton"}
    if device == "cpu" or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        paths["engine-onnx"] = {"backend": "onnx"}
    return paths


def run(args) -> list[dict]:
    rows = []
    for preset_name in args.presets:
        device = "cuda" if preset_name == "evo1-0.77b" else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            print(f"skip {preset_name}: no CUDA device", file=sys.stderr)
            continue
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model, processor = build(preset_name, device, dtype)
        paths = {name: kw for name, kw in engine_paths(device).items() if name not in args.skip}
        # The onnx head is unrolled for a fixed step count: one export per --steps value.
        onnx_dirs = {steps: export_onnx(model, tempfile.mkdtemp(), num_steps=steps)
                     for steps in args.steps if "engine-onnx" in paths}
        rng = np.random.default_rng(0)
        for views in args.views:
            frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(views)]
            obs = {k: v.to(device) for k, v in processor.observation(frames, np.zeros(7), INSTRUCTION).items()}
            obs["pixel_values"] = obs["pixel_values"].to(dtype)
            mask = processor.action_mask(7).to(device)
            for steps in args.steps:
                noise = torch.rand(1, model.config.chunk_length, 24, device=device, dtype=dtype) * 2 - 1
                timings = Recorder(rows, args.json, preset_name, device, views, steps)
                with torch.inference_mode():
                    timings["naive"] = timed(lambda: lambda: naive_chunk(model, obs, mask, noise, steps),
                                             args.iters, device)
                    for name, kwargs in paths.items():
                        if kwargs.get("backend") == "onnx":
                            kwargs = dict(kwargs, onnx_dir=onnx_dirs[steps])

                        def make(kwargs=kwargs):
                            engine = Evo1Engine(model, processor, num_steps=steps, **kwargs)
                            return lambda: engine.predict(obs, mask, noise)

                        timings.attempt(name, lambda make=make: timed(make, args.iters, device))
                    # From camera frames: the fastest engine with the processor's resize on the host,
                    # then with the engine's own resize on its device.
                    fastest = "engine-compiled-triton" if device == "cuda" else "engine-torch"
                    if fastest in paths:
                        for name, resize in (("frames-host-resize", True), ("frames-engine-resize", False)):
                            def make(resize=resize):
                                engine = Evo1Engine(model, processor, num_steps=steps, **paths[fastest])
                                return lambda: engine.predict(
                                    processor.observation(frames, np.zeros(7), INSTRUCTION, resize=resize), mask, noise)

                            timings.attempt(name, lambda make=make: timed(make, args.iters, device))
                if device == "cuda" and not args.no_lerobot:
                    lerobot = lerobot_row(views, steps, args.iters, args.lerobot_probe)
                    if lerobot is not None:
                        timings["lerobot"] = lerobot
    return rows


class Recorder(dict):
    """Timings of one configuration by path name: each is printed, added to `rows` and written
    to the JSON as it comes, so a run cut short keeps what it measured."""

    def __init__(self, rows: list[dict], json_path: str | None, preset_name: str, device: str, views: int, steps: int):
        super().__init__()
        self.rows, self.json_path = rows, json_path
        self.where = {"preset": preset_name, "device": device, "views": views, "steps": steps}

    def attempt(self, name: str, measure) -> None:
        """timings[name] = measure(), or a row that says why it failed: one broken path (a kernel
        that does not compile on this GPU, say) costs its row, not the rest of the run."""
        try:
            self[name] = measure()
        except Exception as exc:  # noqa: BLE001  reported in the row and on stderr
            traceback.print_exc()
            self.rows.append({**self.where, "path": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{name}: failed: {type(exc).__name__}: {exc}", flush=True)

    def __setitem__(self, name: str, r: dict) -> None:
        super().__setitem__(name, r)
        self.rows.append({**self.where, "path": name, **r})
        print(f"{self.where['preset']:11s} {self.where['device']:4s} views={self.where['views']} "
              f"steps={self.where['steps']:2d} {name:22s} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
              f"{r['chunks_per_s']:7.1f} chunks/s" + (f"  peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None
                                                      else ""), flush=True)
        if self.json_path:
            write_json(self.json_path, self.rows)


def write_json(path: str, rows: list[dict]) -> None:
    meta = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    Path(path).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["evo1-tiny", "evo1-0.77b"])
    ap.add_argument("--views", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 32, 50])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--no-lerobot", action="store_true")
    ap.add_argument("--lerobot-probe",
                    help="path of lerobot_evo1_probe.py (default: shared/tools/ in or beside the repo)")
    ap.add_argument("--skip", nargs="*", default=[], help="engine paths not to time (e.g. engine-compiled)")
    ap.add_argument("--threads", type=int, help="torch (and onnxruntime CPU) threads (default: torch's)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
