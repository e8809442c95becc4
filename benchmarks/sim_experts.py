#!/usr/bin/env python3
"""The scripted experts' success per task and scene, without ROS: `run_expert` on a `SimWorld`
(reset by seed, plan from the object poses, play the plan, settle 1 s, ask the task's detector).

    MUJOCO_GL=osmesa python benchmarks/sim_experts.py --episodes 20 --json benchmarks/results/sim_experts.json
    python benchmarks/sim_experts.py --task pour_cup --scene wide --episodes 5

Prints a table (successes, rate, Wilson 95 % interval, failed seeds, wall seconds) and writes the
same as JSON. Seeds: --seeds RANGE[+OFFSET] of the seed protocol (default test), the same seeds
for every task and scene. The mixed scene runs the tasks it takes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone

from machine import cpu_model  # benchmarks/machine.py, beside this script

from evo1_ros.sim.expert import run_expert
from evo1_ros.sim.metrics import rate
from evo1_ros.sim.seeds import check_episodes, parse_seeds
from evo1_ros.sim.tasks import select
from evo1_ros.sim.world import SimWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="all", help="task name, comma list or all (default all)")
    parser.add_argument("--scene", default="all", help="scene name, comma list or all (default: the five "
                                                      "variations; mixed runs on its own)")
    parser.add_argument("--episodes", type=int, default=20, help="seeds per task and scene (default 20)")
    parser.add_argument("--seeds", default="test", help="first seed, by the seed protocol (default test)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    first = parse_seeds(args.seeds)
    check_episodes(first, args.episodes)
    world = SimWorld(image_size=64)  # no camera renders: the size only sizes the offscreen buffer
    rows = []
    print(f"{'task':16s} {'scene':10s} {'success':>9s} {'rate':>6s}  wilson95        seconds  failed seeds")
    for task, scene in select(args.task, args.scene):
        world.reset(first, task=task.name, scene=scene.name)
        start = time.perf_counter()
        outcomes = {seed: run_expert(world, seed) for seed in range(first, first + args.episodes)}
        row = {"task": task.name, "scene": scene.name, **rate(sum(outcomes.values()), len(outcomes)),
               "failed_seeds": [seed for seed, ok in outcomes.items() if not ok],
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"{task.name:16s} {scene.name:10s} {row['successes']:>4d}/{row['episodes']:<4d} {row['rate']:6.2f}  "
              f"[{row['wilson95'][0]:.2f}, {row['wilson95'][1]:.2f}]  {row['seconds']:7.1f}  {row['failed_seeds']}",
              flush=True)
    world.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
                       "cpus": os.cpu_count(),
                       "seeds": [first, first + args.episodes - 1], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
