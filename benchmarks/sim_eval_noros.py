#!/usr/bin/env python3
"""Closed-loop sim eval WITHOUT ROS, and the sampler-noise diagnostic, for fast checkpoint tuning.

`evo1-ros eval` (evo1_ros/graphs/evaluate.py) is the measurement of record: it runs the real graph in
real time. This script is the quick loop used while training: `SimWorld` + `Evo1ChunkPolicy`, no
DDS, physics as fast as the CPU allows. Each chunk is predicted from the current frames and state,
and its first `--execute` rows are played one `--dt` apart (receding horizon, no crossfade), which
is how a chunk of a `--rate 10` dataset is meant to be played. Success = the task's detector says
yes for 1.5 s (as `evo1-ros eval`), within `--max-seconds` of sim time. `--task` and `--scene` pick
the episodes (one each; the task's own instruction unless `--instruction`).

    MUJOCO_GL=osmesa python benchmarks/sim_eval_noros.py models/evo1-tiny-sim --seeds 0 50
    python benchmarks/sim_eval_noros.py CHECKPOINT --task stack_cans --scene lighting --seeds 0 20
    MUJOCO_GL=osmesa python benchmarks/sim_eval_noros.py models/evo1-tiny-sim --seeds 0 50 --noise-scale 1
    python benchmarks/sim_eval_noros.py models/evo1-tiny-sim --openloop /work/demos/dataset_112

`--noise-scale S` overrides the checkpoint's sampler noise (uniform in [-S, S]; 0 = deterministic,
starting at the noise's mean). `--openloop DATASET` compares predicted chunks with a dataset's
recorded actions (first 8 rows, mean |error| per joint) with the reference noise (S = 1) and with
S = 0: a model that learned the conditional mean but not to undo the noise shows a small zero-noise
error and a large random one.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from evo1_ros.runtime.policy import Evo1ChunkPolicy

SUCCESS_HOLD_S = 1.5


def closed_loop(policy, seeds, dt: float, execute: int, max_seconds: float, image_size: int, task: str,
                scene: str, instruction: str) -> list[dict]:
    from evo1_ros.sim.world import SimWorld

    world = SimWorld(image_size=image_size, task=task, scene=scene)
    item = world.task.item  # the object the task moves: how high it got, how close the jaws came
    results, start = [], time.time()
    for seed in seeds:
        world.reset(seed)
        t, held, ok, item_zmax, tcp_item_min = 0.0, 0.0, False, 0.0, np.inf
        while t < max_seconds and not ok:
            chunk = policy.predict_chunk([world.render("base"), world.render("wrist")], world.state(), instruction)
            for row in chunk[:execute]:
                world.set_target(row[:6], row[6])
                world.step(dt)
                t += dt
                held = held + dt if world.success() else 0.0
                item_pos = world.object_pose(item)[0]
                item_zmax = max(item_zmax, float(item_pos[2]))
                tcp_item_min = min(tcp_item_min, float(np.linalg.norm(world.tcp_pose()[0] - item_pos)))
                if held >= SUCCESS_HOLD_S:
                    ok = True
                    break
        results.append({"seed": seed, "success": ok, "seconds": round(t, 2), "item_zmax_m": round(item_zmax, 3),
                        "tcp_item_min_m": round(tcp_item_min, 3)})
        print(json.dumps(results[-1]), f"({time.time() - start:.0f} s)", flush=True)
    world.close()
    return results


def openloop(policy, dataset: str, samples: int) -> dict:
    from evo1_ros.data.dataset import Evo1Dataset

    ds = Evo1Dataset(dataset, horizon=policy.chunk_length)
    engine, predict = policy.engine, policy.engine.predict
    cfg = engine.model.config
    errors = {"random": [], "zero": []}
    for i in np.linspace(0, len(ds) - 1, samples).astype(int):
        item = ds[int(i)]
        images = [item["images"][c].permute(1, 2, 0).numpy() for c in ds.cameras]
        obs = policy.processor.observation(images, item["state"].numpy(), item["instruction"])
        shape = (1, cfg.chunk_length, cfg.max_action_dim)
        for name, noise in (("random", torch.rand(shape) * 2 - 1), ("zero", torch.zeros(shape))):
            actions = policy.processor.actions_to_robot(predict(obs, policy._action_mask, noise=noise)[0].float(),
                                                        policy.action_dim)
            errors[name].append(np.abs(actions - item["action"].numpy())[:8].mean(0))
    return {name: {"joint_deg": np.degrees(np.mean(e, 0)[:6]).round(2).tolist(),
                   "gripper": round(float(np.mean(e, 0)[6]), 4)} for name, e in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 50], metavar=("FIRST", "END"),
                        help="episode seeds FIRST..END-1 (default 0 50)")
    parser.add_argument("--task", default="pick_place_can", help="task (default pick_place_can)")
    parser.add_argument("--scene", default="default", help="scene or scene mix (default default)")
    parser.add_argument("--instruction", help="instruction (default: the task's)")
    parser.add_argument("--dt", type=float, default=0.1, help="s between chunk rows (the dataset's 1 / --rate)")
    parser.add_argument("--execute", type=int, default=8, help="chunk rows played before the next prediction")
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--image-size", type=int, default=224, help="camera resolution, px (as evo1-ros eval)")
    parser.add_argument("--noise-scale", type=float, help="sampler noise 0..1 (default: the checkpoint's)")
    parser.add_argument("--openloop", metavar="DATASET", help="open-loop error on a dataset instead")
    parser.add_argument("--samples", type=int, default=20, help="--openloop: dataset steps compared")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    policy = Evo1ChunkPolicy.from_checkpoint(args.checkpoint, noise_scale=args.noise_scale)
    if args.openloop:
        result = {"checkpoint": args.checkpoint, "dataset": args.openloop,
                  "mean_abs_error_rows_0_7": openloop(policy, args.openloop, args.samples)}
    else:
        from evo1_ros.sim.tasks import check_settings

        task, _ = check_settings(args.task, args.scene)
        instruction = args.instruction or task.instruction
        episodes = closed_loop(policy, range(*args.seeds), args.dt, args.execute, args.max_seconds, args.image_size,
                               task.name, args.scene, instruction)
        done = [e for e in episodes if e["success"]]
        result = {"checkpoint": args.checkpoint, "task": task.name, "scene": args.scene, "instruction": instruction,
                  "noise_scale": policy.engine.noise_scale,
                  "seeds": args.seeds, "dt": args.dt, "execute": args.execute, "max_seconds": args.max_seconds,
                  "success_rate": len(done) / len(episodes),
                  "mean_success_seconds": round(float(np.mean([e["seconds"] for e in done])), 2) if done else None,
                  "episodes": episodes}
    print(json.dumps({k: v for k, v in result.items() if k != "episodes"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
