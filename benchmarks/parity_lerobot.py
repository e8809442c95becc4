"""Parity: our Evo1 against LeRobot 0.6.1's Evo1Policy, same random weights, inputs and noise.

LeRobot's policy is built with random weights (no hub: the InternVL model and the tokenizer are
made here) and written with its own `save_pretrained`, its pre/post-processors (made by
`make_evo1_pre_post_processors` from dataset statistics in LeRobot's layout) beside it, and read
back by our `import_lerobot` with the same VLM config dict. Both get the same uint8 views at 448 px
(so LeRobot's float -> uint8 quantisation is exact), the same raw state, the same tokenizer object
and instruction, and the same initial noise: the RNG is seeded identically, we draw LeRobot's noise
shape (B, H*24) ourselves and hand it to `Evo1.sample`. LeRobot's preprocessor normalises and pads
its state; our processor does it with the imported statistics. Compared: the normalised states
(LeRobot's preprocessor output vs ours), the normalised (B, H, 24) chunks that
`predict_action_chunk` returns, the VLM context tokens both heads attend to, and the chunks
de-normalised by LeRobot's postprocessor vs ours.

  python benchmarks/parity_lerobot.py --tiny --views 1 2 3 --seeds 0 1 2 --batch 2
  python benchmarks/parity_lerobot.py --views 2 --seeds 0 1 --steps 32 --json out.json
Needs Python >= 3.12 with lerobot==0.6.1, and this repository on PYTHONPATH.
"""

import argparse
import copy
import json
import platform
import tempfile
import time

import lerobot
import numpy as np
import torch
import transformers

import lerobot.policies.evo1.internvl3_embedder as lr_embedder
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.evo1.configuration_evo1 import Evo1Config as LeRobotEvo1Config
from lerobot.policies.evo1.modeling_evo1 import Evo1Policy
from lerobot.policies.evo1.processor_evo1 import make_evo1_pre_post_processors
from transformers import InternVLConfig, InternVLModel

from evo1_ros.model.checkpoint import import_lerobot
from machine import cpu_model  # benchmarks/machine.py, beside this script
from evo1_ros.model.config import IMG_CONTEXT, internvl3_1b_vlm, tiny_vlm
from evo1_ros.model.processor import images_to_pixels
from evo1_ros.model.tokenizer import build_tiny_tokenizer, load_tokenizer

INSTRUCTIONS = ["pick up the can and put it in the white box", "open the drawer"]
STATE_DIM = ACTION_DIM = 7  # xArm6: 6 joints + gripper
CAMERAS = [f"observation.images.cam{i}" for i in range(3)]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--tiny", action="store_true", help="evo1-tiny widths (448 px views); default InternVL3-1B shapes")
ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                help="bfloat16: VLM in bf16, head fp32 under bf16 autocast on cuda (LeRobot's mode), on both sides")
ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 3], help="present views (of 3 slots; rest masked)")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--steps", type=int, default=32)
ap.add_argument("--batch", type=int, default=1, help="> 1 mixes instructions of different lengths (padding)")
ap.add_argument("--tol", type=float, default=1e-4)
ap.add_argument("--json", default="")
args = ap.parse_args()
dev = torch.device(args.device)
vlm_dtype = getattr(torch, args.dtype)
amp = args.device == "cuda" and args.dtype == "bfloat16"
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 (patch conv too)
torch.manual_seed(1234)

# --- one tokenizer object and one VLM config dict for both sides ---------------------------------
work = tempfile.TemporaryDirectory(prefix="parity_lerobot_")
tok_dir = f"{work.name}/tokenizer"
build_tiny_tokenizer().save_pretrained(tok_dir)
tok = load_tokenizer(tok_dir)
tok.padding_side = "right"
image_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT)
if args.tiny:  # evo1-tiny's widths, at 448 px so that a view is 256 tokens as in the real model
    vlm = tiny_vlm(len(tok), image_token_id, image_size=448)
    head = dict(chunk_size=16, n_action_steps=16, embed_dim=128, hidden_dim=256, state_hidden_dim=256, num_layers=4)
    # num_heads stays LeRobot's default 8: import_lerobot does not read it from config.json yet.
else:
    vlm = internvl3_1b_vlm(14)
    vlm["image_token_id"] = image_token_id
    head = {}  # LeRobot's defaults: H=50, width 896, 8 blocks of 8 heads
layers = vlm["text_config"]["num_hidden_layers"]


class _AutoTokenizer:  # LeRobot's embedder asks the hub for these two: hand it ours instead
    @staticmethod
    def from_pretrained(*a, **k):
        return tok


class _AutoModel:
    @staticmethod
    def from_pretrained(*a, torch_dtype=torch.bfloat16, attn_implementation="eager", **k):
        full = copy.deepcopy(vlm)  # a deeper LM, cut back to `layers` by LeRobot itself
        full["text_config"]["num_hidden_layers"] = layers + 2
        cfg = InternVLConfig(**full)
        cfg._attn_implementation = attn_implementation
        return InternVLModel(cfg).to(torch_dtype)


lr_embedder.AutoTokenizer, lr_embedder.AutoModel = _AutoTokenizer, _AutoModel

# --- LeRobot policy, random weights, saved and imported -----------------------------------------
t0 = time.time()
features = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 448, 448)) for k in CAMERAS}
features["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))
lr_cfg = LeRobotEvo1Config(
    input_features=features,
    output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
    device=args.device, num_inference_timesteps=args.steps, vlm_num_layers=layers, vlm_dtype=args.dtype,
    use_amp=amp, enable_gradient_checkpointing=False, use_flash_attn=False, **head,
)
theirs = Evo1Policy(lr_cfg).to(dev).eval()
theirs.config.empty_cameras = 2  # trailing cameras may be left out of a batch: masked view slots
ckpt = f"{work.name}/lerobot_policy"
theirs.save_pretrained(ckpt)
# Dataset statistics in LeRobot's layout (state and action MIN_MAX, its default mapping).
low = torch.tensor([-1.2, -0.6, -1.6, -0.3, 0.6, -0.5, 0.0])
high = torch.tensor([1.1, 0.4, -0.3, 0.2, 1.4, 0.6, 0.85])
stats = {key: {"min": low, "max": high, "mean": (low + high) / 2, "std": (high - low) / 4}
         for key in ("observation.state", "action")}
preprocessor, postprocessor = make_evo1_pre_post_processors(lr_cfg, stats)
preprocessor.save_pretrained(ckpt)
postprocessor.save_pretrained(ckpt)
ours, processor = import_lerobot(ckpt, tok_dir, vlm=vlm)
processor.tokenizer = tok  # the very object LeRobot tokenises with
ours = ours.to(dev).eval()
ours.vlm.to(vlm_dtype)
n_params = sum(p.numel() for p in theirs.parameters())
print(f"built + saved + imported in {time.time() - t0:.0f} s; LeRobot params {n_params:,}, "
      f"ours {sum(p.numel() for p in ours.parameters()):,}; attention: LeRobot "
      f"{theirs.model.embedder.model.config._attn_implementation}, ours {ours.config.attn_implementation}")


# Record the VLM tokens each head attends to (no extra forward passes).
seen = {}
_lr_vl = theirs.model.get_vl_embeddings
_our_ctx = ours.context


def lr_vl(*a, **k):
    seen["lerobot"] = _lr_vl(*a, **k)
    return seen["lerobot"]


def our_ctx(obs):
    seen["ours"] = _our_ctx(obs)
    return seen["ours"]


theirs.model.get_vl_embeddings, ours.context = lr_vl, our_ctx


def context_diff() -> float:
    fused, valid = seen["lerobot"]
    ctx, key_mask = seen["ours"]
    worst = 0.0
    for b in range(fused.shape[0]):
        a = fused[b][valid[b]].float()
        o = ctx[b][key_mask[b]][:-1].float()  # drop our state token (last)
        if a.shape != o.shape:
            return float("inf")
        worst = max(worst, (a - o).abs().max().item())
    return worst


def run_case(views: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = args.batch
    frames = torch.randint(0, 256, (b, views, 448, 448, 3), generator=g, dtype=torch.uint8)
    state = low + (high - low) * (torch.rand(b, STATE_DIM, generator=g) * 1.2 - 0.1)  # a little past the bounds
    tasks = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(b)]

    batch = {CAMERAS[v]: frames[:, v].permute(0, 3, 1, 2).float().div(255).to(dev) for v in range(views)}
    for v in range(views):  # LeRobot truncates x * 255 to uint8: it must give back our bytes
        back = (batch[CAMERAS[v]] * 255).clamp(0, 255).to(torch.uint8).cpu()
        assert torch.equal(back, frames[:, v].permute(0, 3, 1, 2))
    batch["observation.state"] = state.to(dev)
    batch["task"] = tasks
    batch = preprocessor(batch)  # LeRobot's normalisation and padding of the state

    pix = [images_to_pixels([f.numpy() for f in frames[i]] + [None] * (3 - views), ours.config) for i in range(b)]
    ids, attn = processor.tokenize(tasks)
    obs = {"pixel_values": torch.cat([p for p, _ in pix]), "view_mask": torch.cat([m for _, m in pix]),
           "input_ids": ids, "attention_mask": attn,
           "state": torch.cat([processor.state_vector(s.numpy()) for s in state])}
    obs = {k: v.to(dev) for k, v in obs.items()}
    action_mask = processor.action_mask(ACTION_DIM).expand(b, -1).to(dev)

    h, a = ours.config.chunk_length, ours.config.max_action_dim
    torch.manual_seed(seed)
    noise = torch.rand(b, h * a, device=dev, dtype=torch.float32) * 2 - 1  # LeRobot's draw in get_action
    torch.manual_seed(seed)
    t = time.time()
    ref = theirs.predict_action_chunk(batch).cpu()
    t_lr = time.time() - t
    t = time.time()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        got = ours.sample(obs, action_mask, noise=noise.view(b, h, a), num_steps=args.steps).float().cpu()
    t_ours = time.time() - t
    diff = (got - ref).abs()
    norm_diff = (batch["observation.state"].float().cpu() - obs["state"].cpu()).abs().max().item()
    denorm = torch.stack([torch.from_numpy(processor.actions_to_robot(c, ACTION_DIM)) for c in got])
    denorm_diff = (postprocessor(ref).double() - denorm).abs().max().item()
    return dict(views=views, seed=seed, batch=b, max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item(),
                context_max_abs_diff=context_diff(), max_abs_action=ref.abs().max().item(),
                state_norm_max_abs_diff=norm_diff, denorm_max_abs_diff=denorm_diff,
                lerobot_s=round(t_lr, 2), ours_s=round(t_ours, 2), chunk=list(ref.shape))


rows = []
print(f"{'views':>5} {'seed':>4} {'max|diff|':>10} {'mean|diff|':>10} {'ctx max|diff|':>13} {'max|a|':>7} "
      f"{'norm|diff|':>10} {'denorm|diff|':>12} {'lerobot s':>9} {'ours s':>7}")
for views in args.views:
    for seed in args.seeds:
        r = run_case(views, seed)
        rows.append(r)
        print(f"{r['views']:>5} {r['seed']:>4} {r['max_abs_diff']:>10.2e} {r['mean_abs_diff']:>10.2e} "
              f"{r['context_max_abs_diff']:>13.2e} {r['max_abs_action']:>7.3f} "
              f"{r['state_norm_max_abs_diff']:>10.2e} {r['denorm_max_abs_diff']:>12.2e} "
              f"{r['lerobot_s']:>9.2f} {r['ours_s']:>7.2f}", flush=True)

worst = max(max(r["max_abs_diff"], r["state_norm_max_abs_diff"], r["denorm_max_abs_diff"]) for r in rows)
ok = worst <= args.tol
print(f"worst max|diff| {worst:.3e} -> {'PASS' if ok else 'FAIL'} (tol {args.tol:g}, {args.dtype}, {args.device})")
result = dict(
    preset="tiny" if args.tiny else "internvl3-1b (evo1-0.77b)", device=args.device, dtype=args.dtype,
    steps=args.steps, params=n_params, tol=args.tol, worst_max_abs_diff=worst, passed=ok, rows=rows,
    gpu=torch.cuda.get_device_name(0) if args.device == "cuda" else None, cpu=cpu_model(),
    python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
    lerobot=lerobot.__version__, numpy=np.__version__,
)
if args.json:
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
raise SystemExit(0 if ok else 1)
