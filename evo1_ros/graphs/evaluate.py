"""`evo1-ros eval`: closed-loop evaluation in the MuJoCo sim, through the ROS graph.

For every task and scene asked for (`--task`, `--scene`: a name, a comma list, or `all`), the same
seeds: episode i of each uses seed first + i (`--seed N`, or `--seeds NAME[+OFFSET]` of the seed
protocol, `sim/seeds.py`, which the command prints). Each episode: pause inference, reset sim_node
with the next seed, resume, and run the xarm6_inference graph (`use_sim:=true`, this process) until
the task's detector has said yes for SUCCESS_HOLD_S or `--max-seconds` pass. In a scene holding the
objects of several tasks (`mixed`) every such task's detector is watched: the JSON says how often
the named task succeeded and how often each other one did (with `--instruction` any text, e.g.
nonsense, replaces the tasks' own). By default the graph runs in real time, so the policy's
latency and the machine's load count; with `--sim-time` every node runs on the simulation's clock
and physics waits for the cameras and for each chunk (sim/lockstep.py): the result depends on the
policy alone, not on how fast this machine is, and times are sim seconds.

Reports per task and scene: success rate with its Wilson 95 % interval, mean episode time (to the
success, or the time limit) and action smoothness: the mean absolute jerk of the commanded joint
trajectory (the targets of the trajectory windows the inference node sends the driver), the
largest jump of those targets at a chunk seam, and stalls (control ticks after an episode's first
chunk with nothing to send). `--extra-latency-ms` adds latency to every chunk.
`--checkpoint expert` puts the scripted expert, which reads the object poses from the world, in
the policy's seat: a check of the graph, its timing and the success detectors. `--through-sdk`
puts the real arm's path between driver and sim arm (xarm_sdk backend, SDK, emulated controller).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from evo1_ros.graphs.demo import add_graph_arguments, inference_overrides, inference_settings
from evo1_ros.sim.metrics import latency_ms, rate

SUCCESS_HOLD_S = 1.5  # a task must stay done this long: carrying the can over the box is no success


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, or `expert` (scripted, privileged)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and scene (default 10)")
    first = parser.add_mutually_exclusive_group()
    first.add_argument("--seed", type=int, help="first episode's seed; episode i uses seed + i (default: dev's first)")
    first.add_argument("--seeds", metavar="RANGE[+OFFSET]", help="first seed by the seed protocol: dev, test, "
                                                                  "test+50, ... (printed when the command runs)")
    parser.add_argument("--task", default="pick_place_can", help="task name, comma list, or all (default "
                        "pick_place_can); each runs with its own instruction unless --instruction is given")
    parser.add_argument("--scene", default="default", help="scene name, comma list, or all (the five variations; "
                        "default: default)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="episode time limit, s (default 20)")
    add_graph_arguments(parser)


def run_episode(graph, max_seconds: float, watched: list) -> dict:
    """One episode; `watched` are the tasks whose detectors are read besides sim_node's flag (the
    other tasks of a mixed scene). It ends once any of them stays done for SUCCESS_HOLD_S."""
    graph.reset_episode()
    observer = graph.observer
    start, stalls_before = observer.now(), graph.inference.stalls  # wall or sim seconds, as the graph runs
    since = {t.name: None for t in watched}  # when each other detector turned (and stayed) on
    held = {}
    while observer.now() - start < max_seconds:
        success = observer.success_held(SUCCESS_HOLD_S)
        now = observer.now()
        for t in watched:
            since[t.name] = (since[t.name] or now) if t.success(graph.world) else None
        held = {name: s is not None and now - s >= SUCCESS_HOLD_S for name, s in since.items()}
        if success is not None or any(held.values()):
            break
        time.sleep(0.05)
    jerk, rate, jump = observer.jerk(graph.inference.dt), observer.control_rate(), observer.seam_jump()
    episode = {"success": success is not None,
               "seconds": round(success - start if success is not None else observer.now() - start, 2),
               "mean_abs_jerk_rad_s3": None if jerk is None else round(jerk, 3),
               "control_rate_hz": None if rate is None else round(rate, 2),
               "stalls": graph.inference.stalls - stalls_before,
               "largest_seam_jump_rad": None if jump is None else round(jump, 4)}
    if watched:
        episode["other_tasks"] = held
    return episode


def run(args) -> int:
    results_out = sys.stdout  # the JSON's: with --through-sdk the xArm SDK prints its chatter there, sent to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.through_sdk else contextlib.nullcontext():
        return _run(args, results_out)


def _run(args, results_out) -> int:
    from tqdm import tqdm

    from evo1_ros.sim import seeds as protocol
    from evo1_ros.sim.scenes import UnknownName
    from evo1_ros.graphs.sim_graph import EXPERT, SimGraph
    from evo1_ros.sim.tasks import TASKS, instruction_warning, select, tasks_in

    def refuse(message: str) -> int:
        print(f"evo1-ros eval: error: {message}", file=sys.stderr)
        return 2

    if args.episodes < 1:
        return refuse("--episodes must be at least 1")
    try:
        pairs = select(args.task, args.scene)
        first = (protocol.parse_seeds(args.seeds) if args.seeds
                 else args.seed if args.seed is not None else protocol.SEED_RANGES["dev"].first)
        seed_range = protocol.check_episodes(first, args.episodes)
    except (UnknownName, ValueError) as e:
        return refuse(str(e))
    last = first + args.episodes - 1
    print(f"{protocol.protocol()}\nevo1-ros eval: seeds {first}..{last} "
          f"({'range ' + seed_range.name if seed_range else 'outside every range'})", file=sys.stderr)
    if seed_range is not None and seed_range.name == "train":
        print("evo1-ros eval: warning: these are train seeds, the scenes demonstrations are recorded in",
              file=sys.stderr)
    instruction = {t.name: args.instruction or t.instruction for t, _ in pairs}
    if args.checkpoint != EXPERT:
        for text in dict.fromkeys(instruction.values()):
            if (warning := instruction_warning(args.checkpoint, text)) is not None:
                print(f"evo1-ros eval: warning: {warning}", file=sys.stderr)
    task0, scene0 = pairs[0]
    try:
        graph = SimGraph(args.checkpoint, instruction[task0.name], args.image_size, args.fps, args.control_rate,
                         first, inference_overrides(args), sim_time=args.sim_time, speed=args.speed,
                         task=task0.name, scene=scene0.name, through_sdk=args.through_sdk)
    except RuntimeError as e:  # a node failed to start (bad checkpoint, ...): its name and why
        print(f"evo1-ros eval: {e}", file=sys.stderr)
        return 1
    runs = []
    try:
        for task, scene in pairs:
            graph.select_episodes(task.name, scene.name, first, instruction[task.name])
            watched = [TASKS[name] for name in tasks_in(scene) if name != task.name]
            chunks_before, episodes = len(graph.policy.latencies), []
            bar = tqdm(range(args.episodes), desc=f"eval {task.name}/{scene.name}", unit="episode")
            for i in bar:
                episodes.append({"seed": first + i, **run_episode(graph, args.max_seconds, watched)})
                bar.set_postfix(success=f"{sum(e['success'] for e in episodes)}/{len(episodes)}",
                                last=f"{episodes[-1]['seconds']:.1f}s")
            runs.append(summarize(task.name, scene.name, instruction[task.name], episodes, watched,
                                  graph.policy.latencies[chunks_before:]))
    finally:
        graph.close()

    results = {
        "checkpoint": str(args.checkpoint),
        "seeds": {"first": first, "last": last, "range": seed_range.name if seed_range else None,
                  "protocol": {r.name: [r.first, r.stop - 1] for r in protocol.SEED_RANGES.values()}},
        "clock": "sim" if args.sim_time else "wall", "speed": args.speed if args.sim_time else None,
        "through_sdk": args.through_sdk,
        "max_seconds": args.max_seconds, "success_hold_seconds": SUCCESS_HOLD_S,
        "image_size": args.image_size, "fps": args.fps, "target_control_rate_hz": round(1.0 / graph.inference.dt, 2),
        "inference": inference_settings(graph.inference),  # in effect: the parameters', else the checkpoint's
        "runs": runs,
    }
    text = json.dumps(results, indent=2)
    print(text, file=results_out)
    print(table(runs), file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def summarize(task: str, scene: str, instruction: str, episodes: list[dict], watched: list, latencies: list) -> dict:
    """One task and scene's episodes -> its block of the JSON: every rate with its Wilson interval."""
    def mean(key):
        values = [e[key] for e in episodes if e[key] is not None]
        return round(float(np.mean(values)), 3) if values else None

    n = len(episodes)
    block = {"task": task, "scene": scene, "instruction": instruction,
             "success": rate(sum(e["success"] for e in episodes), n)}
    if watched:
        block["other_tasks"] = {t.name: rate(sum(e["other_tasks"][t.name] for e in episodes), n) for t in watched}
    jumps = [e["largest_seam_jump_rad"] for e in episodes if e["largest_seam_jump_rad"] is not None]
    return {**block, "mean_episode_seconds": mean("seconds"), "mean_abs_jerk_rad_s3": mean("mean_abs_jerk_rad_s3"),
            "achieved_control_rate_hz": mean("control_rate_hz"), "stalls": sum(e["stalls"] for e in episodes),
            "largest_seam_jump_rad": max(jumps) if jumps else None, "chunks": len(latencies),
            "inference_latency_ms": latency_ms(latencies), "per_episode": episodes}


def table(runs: list[dict]) -> str:
    """The runs as a plain text table: task, scene, success k/n, rate and its Wilson 95 % interval."""
    lines = [f"{'task':16s} {'scene':10s} {'success':>9s} {'rate':>6s}  wilson95      stalls  seam jump  other tasks"]
    for r in runs:
        s = r["success"]
        others = ", ".join(f"{name} {o['successes']}/{o['episodes']}" for name, o in r.get("other_tasks", {}).items())
        jump = "n/a" if r["largest_seam_jump_rad"] is None else f"{r['largest_seam_jump_rad']:.3f}"
        lines.append(f"{r['task']:16s} {r['scene']:10s} {s['successes']:>4d}/{s['episodes']:<4d} {s['rate']:6.2f}  "
                     f"[{s['wilson95'][0]:.2f}, {s['wilson95'][1]:.2f}]  {r['stalls']:6d}  {jump:>9s}  {others}")
    return "\n".join(lines)
