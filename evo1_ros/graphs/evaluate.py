"""`evo1-ros eval`: closed-loop evaluation in the MuJoCo sim, through the ROS graph.

Each episode: pause inference, reset sim_node with the next seed (`--seed`, `--seed`+1, ...),
resume, and run the xarm6_inference graph (`use_sim:=true`, this process) until the can has stayed
in the box for SUCCESS_HOLD_S or `--max-seconds` pass. By default the graph runs in real time, so
the policy's latency and the machine's load count; with `--sim-time` every node runs on the
simulation's clock and physics waits for the cameras and for each chunk (sim/lockstep.py): the
result depends on the policy alone, not on how fast this machine is, and times are sim seconds.
Reports success rate, mean episode time (to the success, or the time limit) and action
smoothness: the mean absolute jerk of the commanded joint trajectory (the first target of every
trajectory window the inference node sends the driver). `--checkpoint expert` puts the scripted
expert, which reads the object poses from the world, in the policy's seat: a check of the graph,
its timing and the success detector.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evo1_ros.graphs.demo import add_graph_arguments, inference_overrides

SUCCESS_HOLD_S = 1.5  # the can must stay in the box this long: carrying it over the box is no success


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, or `expert` (scripted, privileged)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="first episode's seed; episode i uses seed + i")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="episode time limit, s (default 20)")
    add_graph_arguments(parser)


def run_episode(graph, max_seconds: float) -> dict:
    graph.reset_episode()
    observer = graph.observer
    start = observer.now()  # wall or sim seconds, as the graph runs
    while (success := observer.success_held(SUCCESS_HOLD_S)) is None and observer.now() - start < max_seconds:
        time.sleep(0.05)
    jerk, rate = observer.jerk(graph.inference.dt), observer.control_rate()
    return {"success": success is not None,
            "seconds": round(success - start if success is not None else max_seconds, 2),
            "mean_abs_jerk_rad_s3": None if jerk is None else round(jerk, 3),
            "control_rate_hz": None if rate is None else round(rate, 2)}


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from evo1_ros.sim.metrics import latency_ms
    from evo1_ros.graphs.sim_graph import SimGraph

    if args.episodes < 1:
        print("evo1-ros eval: --episodes must be at least 1", file=sys.stderr)
        return 2
    try:
        graph = SimGraph(args.checkpoint, args.instruction, args.image_size, args.fps, args.control_rate, args.seed,
                         inference_overrides(args), sim_time=args.sim_time, speed=args.speed)
    except RuntimeError as e:  # a node failed to start (bad checkpoint, ...): its name and why
        print(f"evo1-ros eval: {e}", file=sys.stderr)
        return 1
    episodes = []
    try:
        bar = tqdm(range(args.episodes), desc="eval", unit="episode")
        for i in bar:
            episodes.append({"seed": args.seed + i, **run_episode(graph, args.max_seconds)})
            bar.set_postfix(success=f"{sum(e['success'] for e in episodes)}/{len(episodes)}",
                            last=f"{episodes[-1]['seconds']:.1f}s")
    finally:
        graph.close()

    def mean(key):
        values = [e[key] for e in episodes if e[key] is not None]
        return round(float(np.mean(values)), 3) if values else None

    results = {
        "checkpoint": str(args.checkpoint), "instruction": graph.inference.instruction,
        "episodes": len(episodes), "seed": args.seed,
        "clock": "sim" if args.sim_time else "wall", "speed": args.speed if args.sim_time else None,
        "max_seconds": args.max_seconds, "success_hold_seconds": SUCCESS_HOLD_S,
        "image_size": args.image_size, "fps": args.fps, "target_control_rate_hz": round(1.0 / graph.inference.dt, 2),
        "inference": {"backend": graph.inference.get_parameter("backend").value,
                      "chunk_mode": graph.inference.scheduler.mode,  # in effect: the parameter's or the checkpoint's
                      "request_threshold": graph.inference.scheduler.request_threshold,
                      "noise_scale": graph.inference.get_parameter("noise_scale").value},
        "success_rate": sum(e["success"] for e in episodes) / len(episodes),
        "mean_episode_seconds": mean("seconds"), "mean_abs_jerk_rad_s3": mean("mean_abs_jerk_rad_s3"),
        "achieved_control_rate_hz": mean("control_rate_hz"),
        "chunks": len(graph.policy.latencies), "inference_latency_ms": latency_ms(graph.policy.latencies),
        "per_episode": episodes,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0
