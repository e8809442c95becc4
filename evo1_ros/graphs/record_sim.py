"""Record scripted-expert demonstrations in sim through the real ROS graph, in one process.

    evo1-ros record-sim --out /work/demos/bags --episodes 60 --first-seed 1000
    evo1-ros record-sim --out /work/demos/stack --task stack_cans --scene mix --seeds train+20000
    evo1-ros convert /work/demos/bags/* --out /work/demos/dataset --rate 10

Nodes: sim_node's (its bringup: the sim world's cameras, xarm6_driver on a SimBackend of the same
world, the clock), the recorder, and the sim expert (nodes/sim_expert.py) as the operator. Episodes
show the `--task` (its instruction unless `--instruction` says otherwise) in the `--scene`: one
scene, or a mix drawn per episode from its seed (`mix`: the five variations alike, or
`NAME:WEIGHT,...`). Episode i shows seed first_seed + i (the sim's seed counter; the expert resets
once per episode); seeds must be `train` seeds (`sim/seeds.py`). Each bag's operator note names its
seed, task and scene.

Time. Rendering two cameras in software (osmesa) on a loaded CPU is slower than real time, and
a real-time run would drop and jitter frames. So the world here is a `LockstepWorld`: physics may
advance one camera frame period at a time and only after the cameras captured the frame set of the
current sim time. Its step count is the ROS time (published on /clock; every node runs on it with
use_sim_time), so frames sit exactly 1/fps apart in sim time, a 10 Hz converter grid finds a frame of
age 0 at every step, and the bags hold what a real-time run on a fast machine would have recorded,
however loaded the CPU is. Between frames, physics runs at `--speed` x real time.

Parallel runs (more of a shared CPU) need their own ROS_DOMAIN_ID, seed range and --out each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory for the episode bags")
    parser.add_argument("--episodes", type=int, default=60)
    first = parser.add_mutually_exclusive_group()
    first.add_argument("--first-seed", type=int, help="episode i uses seed first_seed + i (default: train's first)")
    first.add_argument("--seeds", metavar="train[+OFFSET]", help="first seed by the seed protocol, e.g. train+5000")
    parser.add_argument("--task", default="pick_place_can", help="task the expert demonstrates")
    parser.add_argument("--scene", default="default",
                        help="scene, or a mix drawn per episode: mix | NAME:WEIGHT,... (default: default)")
    parser.add_argument("--instruction", help="instruction stored with the episodes (default: the task's)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--fps", type=float, default=10.0, help="camera frames per sim second")
    parser.add_argument("--speed", type=float, default=2.0,
                        help="physics pace between frames, sim seconds per wall second")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")


class RecordingGraph:
    """The nodes of one recording session, spinning in `context` (default: rclpy's global one,
    initialised by the caller). `expert.done` is set when the last episode is stored."""

    def __init__(self, world, out: Path, episodes: int, first_seed: int, instruction: str,
                 speed: float = 2.0, storage: str = "mcap", context=None, task: str = "pick_place_can",
                 scene: str = "default"):
        """world: a LockstepWorld (it sets the camera rate); speed: physics pace between frames;
        task, scene: sim_node's (a scene mix is drawn per episode)."""
        from rclpy.parameter import Parameter

        from evo1_ros.nodes.recorder import RecorderNode
        from evo1_ros.nodes.sim import bring_up
        from evo1_ros.nodes.sim_expert import SimExpertNode
        from evo1_ros.nodes.spin import SpinThread

        def params(**values):
            return {"context": context, "parameter_overrides": [Parameter("use_sim_time", value=True)]
                    + [Parameter(k, value=v) for k, v in values.items()]}

        self.nodes = []
        try:
            # no wall-clock pacing of the camera thread: the lockstep world paces it in sim time
            self.nodes += bring_up({"evo1_sim": {"world": world, **params(fps=1000.0, seed=first_seed, speed=speed,
                                                                           task=task, scene=scene)},
                                    "xarm6_driver": params(realtime_priority=0)}).values()
            self.recorder = RecorderNode(**params(output_dir=str(out), cameras=["base", "wrist"], storage=storage))
            self.nodes.append(self.recorder)
            self.expert = SimExpertNode(world, **params(episodes=episodes, instruction=instruction, rate_hz=50.0))
            self.nodes.append(self.expert)
        except Exception:
            self.close()
            raise
        self.spin = SpinThread(self.nodes, context, "recording")

    def close(self) -> None:
        if hasattr(self, "spin"):  # stop spinning first: callbacks must not run on destroyed nodes
            self.spin.stop()
        recorder = getattr(self, "recorder", None)
        if recorder is not None and recorder.writer is not None:  # an interrupted demonstration is not one
            recorder.discard()
        for node in reversed(self.nodes):
            node.destroy_node()


def run(args: argparse.Namespace) -> int:
    from evo1_ros.sim import seeds as protocol
    from evo1_ros.sim.tasks import check_settings

    try:
        first = protocol.parse_seeds(args.seeds) if args.seeds else args.first_seed
        first = protocol.SEED_RANGES["train"].first if first is None else first
        protocol.check_episodes(first, args.episodes, allowed=("train",))
        demonstrated, _ = check_settings(args.task, args.scene)
    except ValueError as e:
        print(f"record-sim: error: {e}", file=sys.stderr)
        return 2
    seeds = range(first, first + args.episodes)
    instruction = args.instruction or demonstrated.instruction
    import rclpy

    from evo1_ros.data import bag
    from evo1_ros.sim.lockstep import LockstepWorld

    world = LockstepWorld(args.image_size, args.fps)
    print(f"{args.episodes} episodes of {demonstrated.name} ({instruction!r}) in scene {args.scene}, seeds "
          f"{seeds.start}..{seeds.stop - 1}, {args.image_size} px at {args.fps:g} frames per sim second -> {args.out}",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    graph = None
    try:
        start = time.monotonic()
        graph = RecordingGraph(world, args.out, args.episodes, first, instruction, args.speed, args.storage,
                               task=demonstrated.name, scene=args.scene)
        graph.expert.done.wait()
        outcomes = [bag.read_meta(path).get("success") for path in sorted(args.out.iterdir())]
        print(f"{len(outcomes)} episodes in {args.out} ({outcomes.count(True)} successful); "
              f"this run took {time.monotonic() - start:.0f} s", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if graph is not None:
            graph.close()
        rclpy.try_shutdown()
        world.close()  # after the camera thread has stopped: it owns the GL context
    return 0

