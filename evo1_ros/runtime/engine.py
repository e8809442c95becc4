"""The inference engine behind the inference node: one action chunk per observation, fast.

What makes it fast, compared with the reference server's path:
- no padding to a fixed prompt length and no ViT work for absent views (`encode_observation`);
- prompt token ids cached per instruction (`Evo1Processor`);
- each DiT block's context keys/values computed once per chunk, not once per Euler step;
- on CUDA, the whole Euler loop captured as one CUDA graph over static buffers, so its ~1000
  small kernels launch as one (launch overhead, not arithmetic, dominates at this size);
- optionally the ViT compiled with torch.compile;
- an onnxruntime backend for the action head (CUDA / TensorRT providers when present).

Backends compute the same function as `Evo1.sample`: tests hold them to 1e-4 in fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ..model.evo1 import Evo1, time_index
from ..model.processor import Evo1Processor

BACKENDS = ("torch", "onnx")
KV_GRAPH, VELOCITY_GRAPH = "action_head_kv.onnx", "action_head_velocity.onnx"


class _GraphedDenoiser:
    """The Euler loop of one context length, captured once as a CUDA graph."""

    def __init__(self, model: Evo1, kv, key_mask, noise, mask, steps: int):
        self.kv = [(k.clone(), v.clone()) for k, v in kv]
        self.key_mask = None if key_mask is None else key_mask.clone()
        self.noise, self.mask = noise.clone(), mask.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            for _ in range(2):
                model.denoise(self.kv, self.key_mask, self.noise, self.mask, steps)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = model.denoise(self.kv, self.key_mask, self.noise, self.mask, steps)

    def __call__(self, kv, key_mask, noise, mask) -> torch.Tensor:
        for (k, v), (sk, sv) in zip(kv, self.kv):
            sk.copy_(k)
            sv.copy_(v)
        if key_mask is not None:
            self.key_mask.copy_(key_mask)
        self.noise.copy_(noise)
        self.mask.copy_(mask)
        self.graph.replay()
        return self.out.clone()


class _HeadVelocity(torch.nn.Module):
    """ONNX-exportable velocity step: flat list of per-block keys/values as inputs."""

    def __init__(self, model: Evo1):
        super().__init__()
        self.head = model.head

    def forward(self, x, time_emb, key_mask, *kv):
        pairs = [(kv[2 * i], kv[2 * i + 1]) for i in range(len(kv) // 2)]
        return self.head.velocity(x, pairs, key_mask, time_emb)


class _HeadKeysValues(torch.nn.Module):
    def __init__(self, model: Evo1):
        super().__init__()
        self.head = model.head

    def forward(self, context):
        return tuple(t for pair in self.head.context_keys_values(context) for t in pair)


def export_onnx(model: Evo1, out_dir: str | Path, context_length: int = 64) -> Path:
    """Write the action head as two ONNX graphs: context -> per-block K/V (run once per chunk)
    and one Euler velocity step (run N times). The VLM stays in PyTorch. Uses the TorchScript
    exporter (deprecated upstream but present in torch 2.4-2.13, and needing no onnxscript)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()  # export in fp32, wherever the live model runs
    width, blocks = model.config.head_width, model.config.head_blocks
    kv_names = [f"{kind}{i}" for i in range(blocks) for kind in ("k", "v")]
    context = torch.randn(1, context_length, width)
    with torch.no_grad():
        kv = _HeadKeysValues(model)(context)
        torch.onnx.export(
            _HeadKeysValues(model), (context,), str(out_dir / KV_GRAPH), dynamo=False, opset_version=17,
            input_names=["context"], output_names=kv_names,
            dynamic_axes={"context": {1: "context"}, **{n: {2: "context"} for n in kv_names}},
        )
        x = torch.zeros(1, model.config.chunk_length, model.config.max_action_dim)
        time_emb = model.head.time_table[:1]
        key_mask = torch.ones(1, context_length, dtype=torch.bool)
        torch.onnx.export(
            _HeadVelocity(model), (x, time_emb, key_mask, *kv), str(out_dir / VELOCITY_GRAPH),
            dynamo=False, opset_version=17,
            input_names=["x", "time_emb", "key_mask", *kv_names], output_names=["velocity"],
            dynamic_axes={"key_mask": {1: "context"}, **{n: {2: "context"} for n in kv_names}},
        )
    return out_dir


class _OnnxHead:
    """The action head on onnxruntime: TensorRT, then CUDA, then CPU, whichever is present."""

    def __init__(self, onnx_dir: str | Path, time_table: torch.Tensor):
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        for name in (KV_GRAPH, VELOCITY_GRAPH):
            if not (onnx_dir / name).is_file():
                raise FileNotFoundError(f"{onnx_dir / name} missing: run `evo1-ros export-onnx` first")
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self.kv = ort.InferenceSession(str(onnx_dir / KV_GRAPH), providers=providers)
        self.velocity = ort.InferenceSession(str(onnx_dir / VELOCITY_GRAPH), providers=providers)
        self.providers = self.velocity.get_providers()
        self.kv_names = [o.name for o in self.kv.get_outputs()]
        self.time_table = time_table.float().cpu().numpy()

    def __call__(self, context: torch.Tensor, key_mask: torch.Tensor | None, noise, mask, steps: int) -> torch.Tensor:
        kv = self.kv.run(None, {"context": context.float().cpu().numpy()})
        n = kv[0].shape[2]
        km = np.ones((1, n), dtype=bool) if key_mask is None else key_mask.cpu().numpy()
        feed = dict(zip(self.kv_names, kv), key_mask=km)
        x, m = (noise * mask).float().cpu().numpy(), mask.float().cpu().numpy()
        for i in range(steps):
            time_emb = self.time_table[time_index(i / steps)][None]
            v = self.velocity.run(None, {**feed, "x": x * m, "time_emb": time_emb})[0]
            x = x + (1.0 / steps) * (v * m)
        return torch.from_numpy(x * m)


class Evo1Engine:
    """Observation in, normalised action chunk (1, H, A) out; see the module docstring."""

    def __init__(
        self,
        model: Evo1,
        processor: Evo1Processor,
        backend: str = "torch",
        onnx_dir: str | Path | None = None,
        cuda_graph: bool = True,
        compile_vit: bool = False,
        num_steps: int | None = None,
        noise_scale: float | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model, self.processor, self.backend = model.eval(), processor, backend
        self.steps = int(num_steps or model.config.num_steps)
        self.noise_scale = float(model.config.noise_scale if noise_scale is None else noise_scale)
        if not 0.0 <= self.noise_scale <= 1.0:
            raise ValueError(f"noise_scale must be in [0, 1], got {self.noise_scale}")
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.use_graph = cuda_graph and backend == "torch" and self.device.type == "cuda"
        self._graphs: dict[tuple, _GraphedDenoiser] = {}
        if compile_vit:
            model.vlm.vision_tower = torch.compile(model.vlm.vision_tower)
        if backend == "onnx":
            if onnx_dir is None:
                raise ValueError("the onnx backend needs onnx_dir (written by `evo1-ros export-onnx`)")
            self.onnx = _OnnxHead(onnx_dir, model.head.time_table)

    @torch.inference_mode()
    def predict(self, obs: dict, action_mask: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        obs = {k: v.to(self.device) for k, v in obs.items()}
        obs["pixel_values"] = obs["pixel_values"].to(self.dtype)
        context, key_mask = self.model.context(obs)
        shape = (1, self.model.config.chunk_length, self.model.config.max_action_dim)
        if noise is None:
            noise = (torch.rand(shape, device=self.device, dtype=self.dtype) * 2 - 1) * self.noise_scale
        noise = noise.to(device=self.device, dtype=self.dtype)
        mask = action_mask.to(device=self.device, dtype=self.dtype).unsqueeze(1)
        if self.backend == "onnx":
            return self.onnx(context, key_mask, noise, mask, self.steps).to(self.device)
        kv = self.model.head.context_keys_values(context)
        if not self.use_graph:
            return self.model.denoise(kv, key_mask, noise, mask, self.steps)
        key = (context.shape[1], key_mask is None)
        if key not in self._graphs:  # one capture per context length (per instruction, in practice)
            self._graphs[key] = _GraphedDenoiser(self.model, kv, key_mask, noise, mask, self.steps)
        return self._graphs[key](kv, key_mask, noise, mask)
