"""What the runtime needs from a policy: one action chunk per observation.

`ChunkPolicy` is the seam between the ROS nodes and the model: the inference node only calls
`predict_chunk`. The Evo-1 implementation lives beside it (`Evo1ChunkPolicy`); it converts between
the nodes' units and the checkpoint's declared conventions (runtime/deployment.py) on the way in
and out, so nothing past this seam ever sees degrees or SDK gripper positions. `DelayedPolicy`
adds latency to any policy (a slower GPU, a remote policy).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .chunking import RTCConfig, RTCInputs
from .deployment import DeploymentConfig, load_deployment


class ChunkPolicy(Protocol):
    chunk_length: int  # H, actions per chunk
    action_dim: int  # valid action dims (xArm6: 6 joints + gripper = 7)
    num_views: int  # camera views the policy expects, in slot order
    action_rate_hz: float  # how far apart a chunk's actions are (1 / period); 0 = unknown
    # How its chunks should be executed where the inference node's parameters leave it open
    # (runtime.chunking); a policy may leave these out or set None for the node's defaults.
    chunk_mode: str | None
    request_threshold: float | None
    rtc_config: RTCConfig | None  # chunk_mode rtc's settings
    # Why it cannot take `rtc` inputs, or None if it can; a policy without it cannot (rtc_refusal()).
    rtc_refusal: str | None

    def instruction_problem(self, instruction: str) -> str | None:
        """Why this policy cannot take `instruction` (e.g. too many tokens), or None."""
        ...

    def predict_chunk(
        self, images: Sequence[np.ndarray | None], state: np.ndarray, instruction: str,
        rtc: RTCInputs | None = None,
    ) -> np.ndarray:
        """images: per view slot an (H, W, 3) uint8 RGB frame or None (missing view);
        state: (action_dim,) joints (rad) + gripper drive; returns (chunk_length, action_dim)
        absolute joint targets (rad) + gripper drive, in robot units (de-normalised).
        rtc: real-time chunking inputs (ChunkScheduler.rtc_inputs, robot units), or None for a
        plain chunk; a policy that cannot take them raises ValueError with its rtc_refusal."""
        ...


def rtc_refusal(policy) -> str | None:
    """Why `policy` cannot run real-time chunking (chunk_mode rtc), or None if it can."""
    return getattr(policy, "rtc_refusal", f"{type(policy).__name__} takes no real-time chunking inputs")


def predict(policy, images, state, instruction: str, rtc: RTCInputs | None = None) -> np.ndarray:
    """`policy.predict_chunk`, how every caller and wrapper calls it: a plain request goes through
    with three arguments, so a policy without real-time chunking need not take a fourth."""
    if rtc is None:
        return policy.predict_chunk(images, state, instruction)
    return policy.predict_chunk(images, state, instruction, rtc=rtc)


def choose_backend(checkpoint, device: str = "cpu", chunk_mode: str | None = None, onnx_dir=None,
                   head_kernels: str = "torch") -> tuple[str, str]:
    """The fastest inference backend the checkpoint and this machine offer for `chunk_mode`, and why
    (the inference node's `backend: auto`): the torch backend on CUDA (the whole chunk is one CUDA
    graph there) and for what only it can run (real-time chunking, the Triton head); on CPU the
    checkpoint's exported ONNX head (the Euler loop as one onnxruntime call) when it has one for
    its step count and onnxruntime is installed; else torch."""
    if head_kernels != "torch":
        return "torch", f"head_kernels {head_kernels} runs inside the torch backend"
    if str(device).split(":")[0] == "cuda":
        return "torch", "CUDA device: the torch backend runs the whole chunk as one CUDA graph"
    if chunk_mode == "rtc":
        return "torch", ("chunk_mode rtc guides the sampler with the action head's gradient, which only the "
                         "torch backend has")
    from .engine import HEAD_GRAPH, HEAD_INFO  # the model loads next anyway: torch is no extra cost here

    onnx_dir = Path(onnx_dir) if onnx_dir else Path(checkpoint) / "onnx"
    info = onnx_dir / HEAD_INFO
    if not (info.is_file() and (onnx_dir / HEAD_GRAPH).is_file()):
        return "torch", f"no exported ONNX head in {onnx_dir} (`evo1-ros export-onnx` writes one)"
    exported = json.loads(info.read_text()).get("num_steps")
    steps = json.loads((Path(checkpoint) / "config.json").read_text()).get("num_steps")
    if exported != steps:
        return "torch", (f"the ONNX head in {onnx_dir} is unrolled for {exported} Euler steps, the checkpoint "
                         f"samples {steps} (re-export with `evo1-ros export-onnx`)")
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "onnxruntime is not installed (pip install onnxruntime)"
    return "onnx", (f"CPU and an exported ONNX head in {onnx_dir}: onnxruntime runs its Euler loop as one "
                    "call, several times faster than the torch backend's step-by-step loop")


class Evo1ChunkPolicy:
    """Evo-1 behind the `ChunkPolicy` seam: observation in ROS units, action chunk out in ROS units;
    in between, the checkpoint's conventions, normalisation and the engine."""

    def __init__(self, engine, deployment: DeploymentConfig):
        normalizer = engine.processor.normalizer
        if normalizer is None:
            raise ValueError("the processor has no normaliser: cannot map actions to robot units")
        conventions = deployment.conventions
        for what, dims, stats in (("state", conventions.state, normalizer.state_dim),
                                  ("action", conventions.action, normalizer.action_dim)):
            if len(dims) != stats:
                raise ValueError(f"the deployment settings declare {len(dims)} {what} dims, the normalisation "
                                 f"statistics have {stats}")
        cfg = engine.model.config
        if len(conventions.views) > cfg.max_views:
            raise ValueError(f"the deployment settings name {len(conventions.views)} views {conventions.views}, "
                             f"the model takes at most {cfg.max_views}")
        self.engine = engine
        self.processor = engine.processor
        self.deployment = deployment
        self.conventions = conventions
        self.action_dim = normalizer.action_dim
        self.chunk_length = cfg.chunk_length
        self.num_views = cfg.max_views
        self.action_rate_hz = deployment.action_rate_hz
        self.chunk_mode = deployment.chunk_mode
        self.request_threshold = deployment.request_threshold
        self.rtc_config = deployment.rtc
        self.rtc_refusal = engine.rtc_refusal
        self._action_mask = self.processor.action_mask(self.action_dim)

    @classmethod
    def from_checkpoint(
        cls,
        path,
        device: str = "cpu",
        dtype: str | None = None,
        num_steps: int | None = None,
        backend: str = "torch",
        onnx_dir=None,
        cuda_graph: bool = True,
        torch_compile: bool = False,
        noise_scale: float | None = None,
        head_kernels: str = "torch",
    ):
        """`noise_scale` None: the checkpoint's deployment setting."""
        import torch

        from ..model.checkpoint import load_checkpoint
        from .engine import Evo1Engine

        torch_dtype = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in torch_dtype:
            raise ValueError(f"dtype must be one of float32, bfloat16, float16; got {dtype!r}")
        if torch.device(device).type == "cpu":
            # The policy shares the machine with the servo loop, cameras (and in sim, rendering and
            # physics); torch's default of one spinning thread per core starves them and itself
            # (on 2 loaded cores: seconds per tiny chunk instead of 0.25 s). Half the cores.
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        deployment = load_deployment(path)
        model, processor = load_checkpoint(path, device=device, dtype=torch_dtype[dtype])
        if processor.normalizer is None:
            raise ValueError(f"{path} has no norm_stats.json: cannot map actions to robot units")
        engine = Evo1Engine(model, processor, backend=backend, onnx_dir=onnx_dir, cuda_graph=cuda_graph,
                            torch_compile=torch_compile, num_steps=num_steps,
                            noise_scale=deployment.noise_scale if noise_scale is None else noise_scale,
                            head_kernels=head_kernels)
        return cls(engine, deployment)

    def instruction_problem(self, instruction: str) -> str | None:
        try:
            self.processor.tokenize([instruction])  # cached: the worker finds the prompt ready
        except ValueError as e:
            return str(e)
        return None

    def predict_chunk(self, images, state, instruction, rtc: RTCInputs | None = None):
        policy_state = self.conventions.state_to_policy(state)
        # On a GPU the engine resizes the frames itself (inside its CUDA graph): far cheaper than here.
        obs = self.processor.observation(self.conventions.frames_to_policy(images), policy_state, instruction,
                                         resize=self.engine.device.type == "cpu")
        guidance = None
        if rtc is not None:  # the engine refuses it where it cannot (rtc_refusal)
            from .rtc import Guidance

            prefix = self.normalised_actions(self.conventions.actions_to_policy(rtc.prefix, policy_state))
            guidance = Guidance.build(prefix, rtc.delay, rtc.config, self.chunk_length,
                                      self.engine.model.config.max_action_dim)
        actions = self.engine.predict(obs, self._action_mask, guidance=guidance)
        chunk = self.processor.actions_to_robot(actions[0].float(), self.action_dim)
        return self.conventions.actions_to_ros(chunk, policy_state)

    def normalised_actions(self, actions: np.ndarray) -> np.ndarray:
        """(n, action_dim) in the policy's units -> (n, action_dim) as the model samples them: the inverse
        of processor.actions_to_robot (bounds normalisation clips to [-1, 1], where the model lives)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"actions must be (n, {self.action_dim}), got {actions.shape}")
        normalizer = self.processor.normalizer
        return actions if normalizer is None else normalizer.normalize("action", actions)


def latency_refusal(extra_latency_ms) -> str | None:
    """Why `extra_latency_ms` cannot be added to every chunk, or None."""
    if isinstance(extra_latency_ms, bool) or not isinstance(extra_latency_ms, (int, float)) \
            or not math.isfinite(extra_latency_ms) or extra_latency_ms < 0:
        return f"extra latency must be a finite number of ms >= 0, got {extra_latency_ms!r}"
    return None


class DelayedPolicy:
    """Any ChunkPolicy with `extra_latency_ms` added to every chunk: it stands for a slower GPU or a
    remote policy, to see how a chunk mode copes with latency. Everything else is the wrapped
    policy's (attributes are read through). The latency may be changed between chunks. `sleep`
    waits that long on the caller's clock (a ROS node on sim time passes its clock's)."""

    def __init__(self, policy, extra_latency_ms: float, sleep: Callable[[float], object] = time.sleep):
        self.policy, self.sleep = policy, sleep
        self.extra_latency_ms = extra_latency_ms

    @property
    def extra_latency_ms(self) -> float:
        return self._extra_latency_ms

    @extra_latency_ms.setter
    def extra_latency_ms(self, value: float) -> None:
        if (reason := latency_refusal(value)) is not None:
            raise ValueError(reason)
        self._extra_latency_ms = float(value)

    def __getattr__(self, name):
        if name == "policy":  # not yet set (copy, unpickling): never recurse into __getattr__
            raise AttributeError(name)
        return getattr(self.policy, name)

    def predict_chunk(self, images, state, instruction, rtc: RTCInputs | None = None):
        chunk = predict(self.policy, images, state, instruction, rtc)
        if self._extra_latency_ms > 0:  # read once per chunk: a change applies to the next
            self.sleep(self._extra_latency_ms / 1000.0)
        return chunk
