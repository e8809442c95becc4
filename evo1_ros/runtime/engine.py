"""The inference engine behind the inference node: one action chunk per observation, fast.

What makes it fast, compared with the reference server's path:
- camera frames resized and normalised on the device, inside the CUDA graph, when given as uint8
  (`Evo1Processor.observation(..., resize=False)`): the antialiased resize to 448 px costs ~7 ms
  per view on a CPU core, more than the whole chunk is meant to take on a GPU;
- no padding to a fixed prompt length and no ViT work for absent views (`token_layout`);
- prompt token ids cached per instruction (`Evo1Processor`), and the token layout they give
  computed once per instruction and set of present views;
- each DiT block's context keys/values computed once per chunk, not once per Euler step;
- on CUDA, the whole chunk (ViT, LM, head and Euler loop) captured as one CUDA graph over static
  buffers per layout, so its thousands of small kernels launch as one (launch overhead, not
  arithmetic, dominates at this size);
- optionally the context (ViT, LM, state token) and the head's velocity compiled with
  torch.compile: fused normalisations and pointwise ops, a fraction fewer kernels;
- optionally the head's Euler loop as 19 Triton kernels per step instead of ~116 torch ones
  (`head_kernels="triton"`, runtime/head_kernels.py), inside the same CUDA graph;
- an onnxruntime backend for the action head, exported as one graph with the Euler loop
  unrolled: one call per chunk (CUDA / TensorRT providers when present; on CPU it removes the
  per-operator Python overhead that dominates a small head).

Real-time chunking (runtime.rtc) guides the Euler loop toward the previous plan: the torch
backend runs it, eager or in the CUDA graph (the previous plan, its weights and the guidance clip
are graph inputs; the guided and the plain chunk are two graphs of one layout).

Backends compute the same function as `Evo1.sample`: tests hold them to 1e-4 in fp32.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from pathlib import Path

import torch

from ..model.evo1 import Evo1
from ..model.processor import Evo1Processor, normalize_pixels
from .rtc import Guidance

BACKENDS = ("torch", "onnx")
HEAD_KERNELS = ("torch", "triton")
HEAD_GRAPH, HEAD_INFO = "action_head.onnx", "action_head.json"
# Token layouts and captured graphs kept, the most recently used: each graph holds its own
# activation memory (tens of MB for evo1-0.77b), and every new instruction brings a new layout.
MAX_CACHED = 4


def _recent(cache: OrderedDict, key, make):
    """cache[key], made if missing; the least recently used entry goes past MAX_CACHED."""
    if key not in cache:
        if len(cache) == MAX_CACHED:
            cache.popitem(last=False)
        cache[key] = make()
    cache.move_to_end(key)
    return cache[key]


class _GraphedChunk:
    """Observation to chunk for one token layout (one instruction and set of present views),
    captured once as a CUDA graph over static input buffers: the ViT, the LM, the state token,
    the context keys/values and the whole Euler loop replay as one launch."""

    def __init__(self, run, inputs: dict[str, torch.Tensor], layout):
        self.inputs = {name: value.clone() for name, value in inputs.items()}
        self.layout = layout  # the graph reads its tensors: they must live as long as it does
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (and compiles, if any)
            for _ in range(2):
                run(**self.inputs, layout=layout)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run(**self.inputs, layout=layout)

    def __call__(self, **inputs) -> torch.Tensor:
        for name, value in inputs.items():
            self.inputs[name].copy_(value)
        self.graph.replay()
        return self.out.clone()


class _HeadChunk(torch.nn.Module):
    """The whole action head, context to chunk, with the Euler loop unrolled: exported as one
    ONNX graph, onnxruntime runs a chunk in one call instead of one call per step."""

    def __init__(self, model: Evo1, steps: int):
        super().__init__()
        self.model, self.steps = model, steps

    def forward(self, context, key_mask, noise, mask):
        kv = self.model.head.context_keys_values(context)
        return self.model.denoise(kv, key_mask, noise, mask, self.steps)


def export_onnx(model: Evo1, out_dir: str | Path, num_steps: int | None = None, context_length: int = 64) -> Path:
    """Write the action head (context keys/values and the `num_steps` Euler steps) as one ONNX
    graph, HEAD_GRAPH, and the step count it was unrolled for, HEAD_INFO. The VLM stays in
    PyTorch. Uses the TorchScript exporter (present in torch 2.4-2.13, and needing no onnxscript)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = int(num_steps or model.config.num_steps)
    model = copy.deepcopy(model).float().cpu().eval()  # export in fp32, wherever the live model runs
    cfg = model.config
    inputs = (
        torch.randn(1, context_length, cfg.head_width),
        torch.ones(1, context_length, dtype=torch.bool),
        torch.zeros(1, cfg.chunk_length, cfg.max_action_dim),
        torch.ones(1, 1, cfg.max_action_dim),
    )
    with torch.no_grad():
        torch.onnx.export(
            _HeadChunk(model, steps), inputs, str(out_dir / HEAD_GRAPH), dynamo=False, opset_version=17,
            input_names=["context", "key_mask", "noise", "mask"], output_names=["actions"],
            dynamic_axes={"context": {1: "context"}, "key_mask": {1: "context"}},
        )
    (out_dir / HEAD_INFO).write_text(json.dumps({"num_steps": steps}))
    return out_dir


class _OnnxHead:
    """The action head on onnxruntime: TensorRT, then CUDA, then CPU, whichever is present."""

    def __init__(self, onnx_dir: str | Path, steps: int):
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        for name in (HEAD_GRAPH, HEAD_INFO):
            if not (onnx_dir / name).is_file():
                raise FileNotFoundError(f"{onnx_dir / name} missing: run `evo1-ros export-onnx` first")
        exported = json.loads((onnx_dir / HEAD_INFO).read_text())["num_steps"]
        if exported != steps:
            raise ValueError(f"{onnx_dir} holds the head unrolled for {exported} Euler steps, the engine "
                             f"runs {steps}: re-export with `evo1-ros export-onnx --steps {steps}`")
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        # On the CPU provider: as many threads as torch was given (the policy leaves the other
        # cores to the servo loop and cameras), and no spin-waiting between operators.
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_dir / HEAD_GRAPH), options, providers=providers)
        self.providers = self.session.get_providers()

    def __call__(self, context: torch.Tensor, key_mask: torch.Tensor | None, noise, mask) -> torch.Tensor:
        if key_mask is None:  # "reference" padding: every key attended
            key_mask = torch.ones(context.shape[:2], dtype=torch.bool)
        feed = {"context": context.float().cpu().numpy(), "key_mask": key_mask.cpu().numpy(),
                "noise": noise.float().cpu().numpy(), "mask": mask.float().cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


class Evo1Engine:
    """Observation in, normalised action chunk (1, H, A) out; see the module docstring."""

    def __init__(
        self,
        model: Evo1,
        processor: Evo1Processor,
        backend: str = "torch",
        onnx_dir: str | Path | None = None,
        cuda_graph: bool = True,
        torch_compile: bool = False,
        num_steps: int | None = None,
        noise_scale: float = 1.0,
        head_kernels: str = "torch",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if head_kernels not in HEAD_KERNELS:
            raise ValueError(f"head_kernels must be one of {HEAD_KERNELS}, got {head_kernels!r}")
        if head_kernels == "triton" and backend != "torch":
            raise ValueError(f"head_kernels triton replaces the torch backend's head; backend {backend!r} has its own")
        self.model, self.processor, self.backend = model.eval(), processor, backend
        self.steps = int(num_steps or model.config.num_steps)
        self.noise_scale = float(noise_scale)  # a deployment setting (runtime/deployment.py)
        if not 0.0 <= self.noise_scale <= 1.0:
            raise ValueError(f"noise_scale must be in [0, 1], got {self.noise_scale}")
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.use_graph = cuda_graph and backend == "torch" and self.device.type == "cuda"
        self._layouts: OrderedDict[tuple, object] = OrderedDict()  # per instruction and view set
        self._graphs: OrderedDict[tuple, _GraphedChunk] = OrderedDict()
        # Compiled with inductor's default mode (fused kernels, no graphs of its own), which the
        # CUDA graph then captures; the model itself is left as it is. The first chunk of each
        # new layout pays the compilation (tens of seconds for the 0.77b model).
        self.context = torch.compile(model.context) if torch_compile else model.context
        self.velocity = torch.compile(model.head.velocity) if torch_compile else None
        # Why this engine cannot run real-time chunking, or None if it can.
        self.rtc_refusal = None
        self.fused_head = None
        if head_kernels == "triton":
            from .head_kernels import FusedActionHead  # imports triton: only when asked for

            self.fused_head = FusedActionHead(model.head, self.steps)
            self.rtc_refusal = ("head_kernels triton cannot run real-time chunking: its kernels give no "
                                "gradient for the guidance; use head_kernels torch")
        if backend == "onnx":
            if onnx_dir is None:
                raise ValueError("the onnx backend needs onnx_dir (written by `evo1-ros export-onnx`)")
            self.onnx = _OnnxHead(onnx_dir, self.steps)
            self.rtc_refusal = ("the onnx backend cannot run real-time chunking: its exported head has no "
                                "gradient for the guidance; use backend torch")

    def _chunk(self, state, input_ids, noise, mask, layout, pixel_values=None, prefix=None, weights=None,
               max_weight=None, **views) -> torch.Tensor:
        if pixel_values is None:  # uint8 frames, view_0 .. view_{V-1}
            size = self.model.config.image_size
            pixel_values = torch.stack([normalize_pixels(views[f"view_{i}"][0], size) for i in range(len(views))])
            pixel_values = pixel_values.unsqueeze(0).to(self.dtype)
        obs = {"pixel_values": pixel_values, "state": state, "input_ids": input_ids}
        context, key_mask = self.context(obs, layout)
        if self.backend == "onnx":
            return self.onnx(context, key_mask, noise, mask).to(self.device)
        if self.fused_head is not None:
            return self.fused_head(context, key_mask, noise, mask)
        kv = self.model.head.context_keys_values(context)
        guidance = None if prefix is None else Guidance(prefix, weights, max_weight)
        return self.model.denoise(kv, key_mask, noise, mask, self.steps, velocity=self.velocity, guidance=guidance)

    # no_grad, and out of inference mode even where a caller is in it: the guidance takes a
    # gradient through the head, which tensors made in inference mode cannot take part in.
    @torch.inference_mode(False)
    @torch.no_grad()
    def predict(self, obs: dict, action_mask: torch.Tensor, noise: torch.Tensor | None = None,
                guidance: Guidance | None = None) -> torch.Tensor:
        """`guidance`: real-time chunking inputs (runtime.rtc), None for a plain chunk."""
        if guidance is not None and self.rtc_refusal is not None:
            raise ValueError(self.rtc_refusal)
        # The layout depends on the prompt and the present views only: computed once per pair.
        key = tuple(torch.cat([obs["input_ids"].flatten(), obs["attention_mask"].flatten(),
                               obs["view_mask"].flatten()]).tolist())
        layout = _recent(self._layouts, key, lambda: self.model.layout(obs).to(self.device))
        if "images" in obs:  # uint8 frames (processor's resize=False): resized here, on the device
            views = {f"view_{i}": image.to(self.device) for i, image in enumerate(obs["images"])}
            key += tuple(image.shape for image in obs["images"])  # a graph per set of frame sizes
        else:
            views = {"pixel_values": obs["pixel_values"].to(self.device, self.dtype)}
        shape = (1, self.model.config.chunk_length, self.model.config.max_action_dim)
        if noise is None:
            noise = (torch.rand(shape, device=self.device, dtype=self.dtype) * 2 - 1) * self.noise_scale
        inputs = {**views,
                  "state": obs["state"].to(self.device),
                  "input_ids": obs["input_ids"].to(self.device),
                  "noise": noise.to(device=self.device, dtype=self.dtype),
                  "mask": action_mask.to(device=self.device, dtype=self.dtype).unsqueeze(1)}
        if guidance is not None:
            inputs.update({name: t.to(self.device) for name, t in guidance.tensors().items()})
        if not self.use_graph:
            return self._chunk(**inputs, layout=layout)
        graph = _recent(self._graphs, (key, guidance is not None), lambda: _GraphedChunk(self._chunk, inputs, layout))
        return graph(**inputs)
