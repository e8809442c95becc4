"""`evo1-ros demo`: the whole graph in the MuJoCo sim, headless, recorded.

Runs the xarm6_inference graph with `use_sim:=true` in this process (sim_node + driver on the sim
backend, or with `--through-sdk` on the xArm SDK to an emulated controller, + inference node, over
DDS) for `--seconds`, records the camera frames the inference node subscribes to, and writes to
`--out`: demo.mp4 (cameras side by side; demo.gif where OpenCV has no MP4 encoder),
contact_sheet.png and summary.json (achieved control rate, stalls: control ticks after the first
chunk with nothing to send, the largest jump of the commanded targets at a chunk seam, inference
latency, chunks, success).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from evo1_ros.runtime.chunking import MODES, RTC_SCHEDULES
from evo1_ros.runtime.policy import latency_refusal

SHEET_COLUMNS, SHEET_ROWS = 2, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    parser.add_argument("--out", default="evo1_demo", help="output directory (default ./evo1_demo)")
    parser.add_argument("--checkpoint", help="checkpoint directory, or `expert` for the scripted expert "
                                             "(default: the bundled models/evo1-tiny-sim, else a random evo1-tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode's layout and look")
    parser.add_argument("--task", default="pick_place_can", help="task (its instruction unless --instruction)")
    parser.add_argument("--scene", default="default",
                        help="scene (or a mix, drawn from the seed: mix | NAME:WEIGHT,...)")
    add_graph_arguments(parser)


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the sim graph that demo and eval share."""
    parser.add_argument("--instruction", default="", help="language instruction (default: the params file's)")
    parser.add_argument("--image-size", type=int, default=224, help="camera resolution, px (default 224)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera frame rate (default 10)")
    # A chunk's rows must play at the spacing they were learnt at: the checkpoint says which.
    parser.add_argument("--control-rate", type=float, default=0.0,
                        help="inference control rate, Hz (default 0: the rate the checkpoint was trained at)")
    parser.add_argument("--device", default="", help="torch device for the policy (default: the params file's)")
    parser.add_argument("--backend", choices=["auto", "torch", "onnx"], help="inference engine backend (default: "
                        "the params file's, auto: the fastest the checkpoint and machine offer); onnx reads "
                        "CHECKPOINT/onnx, written by `evo1-ros export-onnx`")
    parser.add_argument("--chunk-mode", choices=MODES,
                        help="how overlapping chunks combine (default: the params file's; left open there: "
                             "the checkpoint's)")
    parser.add_argument("--request-threshold", type=float,
                        help="ask for the next chunk once this fraction of a chunk is left (default: the params "
                             "file's; left open there: the checkpoint's)")
    parser.add_argument("--execution-horizon", type=int, help="chunk mode rtc: actions executed from each chunk "
                        "before the next is asked for (default: the checkpoint's, else 8)")
    parser.add_argument("--max-guidance-weight", type=float, help="chunk mode rtc: clip on the guidance weight "
                        "(default: the checkpoint's, else 10)")
    parser.add_argument("--rtc-schedule", type=str.upper, choices=RTC_SCHEDULES,
                        help="chunk mode rtc: how the guidance decays after the committed actions (default: the "
                             "checkpoint's, else EXP)")
    parser.add_argument("--extra-latency-ms", type=latency_ms_argument, help="add this many ms to every chunk "
                        "(stands for a slower GPU or a remote policy; on --sim-time, sim ms)")
    parser.add_argument("--sim-time", action="store_true",
                        help="run every node on the sim's clock; physics waits for frames and chunks, so the "
                             "outcome does not depend on this machine's speed (default: real time)")
    # Above 1 the driver's servo ticks (wall-clock paced) come further apart in sim time, and its
    # per-tick velocity and acceleration bounds tighten accordingly: 1 keeps the real limits.
    parser.add_argument("--speed", type=float, default=1.0,
                        help="--sim-time: physics pace between frames, sim seconds per wall second (default 1)")
    parser.add_argument("--through-sdk", action="store_true",
                        help="the driver reaches the sim arm as it would a real xArm: backend xarm_sdk, through "
                             "the xArm SDK to an emulated controller (default: the sim backend directly)")


def latency_ms_argument(text: str) -> float:
    """--extra-latency-ms: a finite number of ms >= 0, else argparse's error in words."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if (reason := latency_refusal(value)) is not None:
        raise argparse.ArgumentTypeError(reason)
    return value


def inference_overrides(args) -> dict:
    """The inference node parameters the graph options set; the params file keeps the rest."""
    values = {"device": args.device or None, "backend": args.backend, "chunk_mode": args.chunk_mode,
              "request_threshold": args.request_threshold, "execution_horizon": args.execution_horizon,
              "max_guidance_weight": args.max_guidance_weight, "rtc_schedule": args.rtc_schedule,
              "extra_latency_ms": args.extra_latency_ms}
    return {name: value for name, value in values.items() if value is not None}


def inference_settings(node) -> dict:
    """The execution settings the inference node runs with (its parameters', else the checkpoint's)."""
    scheduler = node.scheduler
    settings = {"backend": node.backend, "chunk_mode": scheduler.mode,
                "extra_latency_ms": node.policy.extra_latency_ms,
                "noise_scale": node.get_parameter("noise_scale").value}
    if scheduler.mode == "rtc":
        settings.update(execution_horizon=scheduler.rtc.execution_horizon,
                        max_guidance_weight=scheduler.rtc.max_guidance_weight, rtc_schedule=scheduler.rtc.schedule)
    else:
        settings["request_threshold"] = scheduler.request_threshold
    return settings


class Recording:
    """Frame sets -> a video written as they come, plus evenly spaced stills for the contact sheet."""

    def __init__(self, out: Path, fps: float, seconds: float):
        self.out, self.fps = out, fps
        self.sheet_times = np.linspace(0.0, seconds, SHEET_COLUMNS * SHEET_ROWS, endpoint=False)
        self.stills: list[np.ndarray] = []
        self.frames, self.first_stamp, self.last_stamp = 0, None, None
        self.writer, self.gif = None, None  # gif: frames kept in memory, only when MP4 is unavailable
        self.video_path = out / "demo.mp4"

    def add(self, stamp: float, images: list[np.ndarray]) -> None:
        import cv2

        frame = cv2.cvtColor(np.hstack(images), cv2.COLOR_RGB2BGR)
        if self.first_stamp is None:
            self.first_stamp = stamp
            size = frame.shape[1], frame.shape[0]
            self.writer = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self.writer.isOpened():
                self.writer, self.gif, self.video_path = None, [], self.out / "demo.gif"
        t = stamp - self.first_stamp
        cv2.putText(frame, f"t = {t:4.1f} s", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        if self.writer is not None:
            self.writer.write(frame)
        else:
            self.gif.append(frame)
        if len(self.stills) < len(self.sheet_times) and t >= self.sheet_times[len(self.stills)]:
            self.stills.append(frame)
        self.frames, self.last_stamp = self.frames + 1, stamp

    def close(self) -> dict:
        """Finish the video and write the contact sheet; what was written."""
        import cv2

        if self.frames == 0:
            raise RuntimeError("no camera frames arrived: is sim_node publishing? (see its log above)")
        if self.writer is not None:
            self.writer.release()
        else:
            animation = cv2.Animation()
            animation.frames, animation.durations = self.gif, [round(1000 / self.fps)] * len(self.gif)
            cv2.imwriteanimation(str(self.video_path), animation)
        blank = np.zeros_like(self.stills[0])
        tiles = self.stills + [blank] * (SHEET_COLUMNS * SHEET_ROWS - len(self.stills))
        rows = [np.hstack(tiles[r * SHEET_COLUMNS:(r + 1) * SHEET_COLUMNS]) for r in range(SHEET_ROWS)]
        sheet = self.out / "contact_sheet.png"
        cv2.imwrite(str(sheet), np.vstack(rows))
        span = (self.last_stamp - self.first_stamp) or float("nan")
        return {"video": self.video_path.name, "contact_sheet": sheet.name, "frames": self.frames,
                "camera_fps": round((self.frames - 1) / span, 2) if self.frames > 1 else None}


def run(args) -> int:
    import tempfile

    from evo1_ros.sim.metrics import latency_ms
    from evo1_ros.graphs.sim_graph import SimGraph, default_checkpoint, random_tiny_checkpoint, warn_random_weights
    from evo1_ros.sim.tasks import check_settings

    try:
        task, _ = check_settings(args.task, args.scene)
    except ValueError as e:
        print(f"evo1-ros demo: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="evo1_demo_") as tmp:
        checkpoint, random_weights = args.checkpoint or default_checkpoint(), False
        if checkpoint is None:
            warn_random_weights()
            checkpoint, random_weights = random_tiny_checkpoint(tmp), True
        print(f"evo1-ros demo: checkpoint {checkpoint}; starting the graph (sim_node + driver + inference)",
              flush=True)
        try:
            graph = SimGraph(checkpoint, args.instruction or task.instruction, args.image_size, args.fps,
                             args.control_rate, args.seed, inference_overrides(args), record_cameras=True,
                             sim_time=args.sim_time, speed=args.speed, task=task.name, scene=args.scene,
                             through_sdk=args.through_sdk)
        except RuntimeError as e:  # a node failed to start (bad checkpoint, ...): its name and why
            print(f"evo1-ros demo: {e}", file=sys.stderr)
            return 1
    recording = Recording(out, args.fps, args.seconds)
    graph.observer.on_frame = recording.add
    try:
        clock = "sim " if args.sim_time else ""
        print(f"evo1-ros demo: {graph.reset_episode()}; running {args.seconds:g} {clock}s", flush=True)
        now = graph.observer.now  # wall or sim seconds, as the graph runs
        start, stalls_before = now(), graph.inference.stalls
        try:
            while (elapsed := now() - start) < args.seconds:
                time.sleep(min(1.0, args.seconds - elapsed))
                latency, rate = latency_ms(graph.policy.latencies)["p50"], graph.observer.control_rate()
                print(f"  {now() - start:5.1f}/{args.seconds:g} {clock}s | frames {recording.frames:4d} | "
                      f"chunks {len(graph.policy.latencies):3d} | control {rate or 0:5.1f} Hz | stalls "
                      f"{graph.inference.stalls - stalls_before:3d} | latency p50 {latency or 0:6.0f} ms | "
                      f"can in box: {'yes' if graph.world.success() else 'no'}", flush=True)
        except KeyboardInterrupt:
            print("evo1-ros demo: interrupted; writing what was recorded", file=sys.stderr)
        elapsed = now() - start
        success, control_rate = graph.world.success(), graph.observer.control_rate()
        jerk, seam_jump = graph.observer.jerk(graph.inference.dt), graph.observer.seam_jump()
        stalls, settings = graph.inference.stalls - stalls_before, inference_settings(graph.inference)
    finally:
        graph.observer.on_frame = None
        graph.close()
    target_rate = 1.0 / graph.inference.dt
    summary = {
        "checkpoint": str(checkpoint), "random_weights": random_weights,
        "instruction": graph.inference.instruction, "seed": args.seed, "task": task.name,
        "scene": graph.world.scene.name, "clock": "sim" if args.sim_time else "wall", "seconds": round(elapsed, 2),
        "through_sdk": args.through_sdk,
        "image_size": args.image_size, "target_fps": args.fps, "inference": settings,
        "target_control_rate_hz": round(target_rate, 2),
        "achieved_control_rate_hz": None if control_rate is None else round(control_rate, 2),
        "achieved_control_rate_fraction": None if control_rate is None else round(control_rate / target_rate, 3),
        # control ticks after the first chunk with nothing to send: the arm waited for the policy
        "stalls": stalls,
        "largest_seam_jump_rad": None if seam_jump is None else round(seam_jump, 4),
        "chunks": len(graph.policy.latencies), "inference_latency_ms": latency_ms(graph.policy.latencies),
        "mean_abs_jerk_rad_s3": None if jerk is None else round(jerk, 3),
        "success": success,
        **recording.close(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    rate_text = "n/a" if control_rate is None else f"{control_rate:.2f} Hz ({100 * control_rate / target_rate:.0f} %)"
    jump_text = "n/a" if seam_jump is None else f"{seam_jump:.3f} rad"
    print(f"evo1-ros demo: control rate {rate_text} of {target_rate:g} Hz; {stalls} stalls after the first chunk; "
          f"largest jump at a chunk seam {jump_text}; backend {settings['backend']}, "
          f"chunk mode {settings['chunk_mode']}")
    print(f"evo1-ros demo: wrote {out / summary['video']}, {out / summary['contact_sheet']}, {out / 'summary.json'}")
    if random_weights:
        warn_random_weights()
    return 0
