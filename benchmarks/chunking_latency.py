#!/usr/bin/env python3
"""Chunk execution modes against inference latency, through the ROS graph (issue 15, item 5).

For every chunk mode and every added latency, one `evo1-ros eval` run (its own process: the sim
world is one per process) on the same seeds, in real time: the policy's own latency, plus
`--extra-latency-ms` on every chunk (standing for a slower GPU or a remote policy). Per cell: success
rate with its Wilson 95 % interval, mean episode time, mean |jerk| of the commanded joint targets,
the largest jump of those targets at a chunk seam, stalls (control ticks after an episode's first
chunk with nothing to send), achieved control rate and inference latency.

Modes: `open_loop_0` (each chunk played whole, the next asked for when it ends: stop and go),
`open_loop_0.5` (the next asked for with half a chunk left, replacing the rest), `crossfade` and
`temporal_ensemble` (both asked for with half a chunk left), `rtc` (real-time chunking with the
checkpoint's RTC settings, else the node's defaults). Every cell runs the same `--backend`
(default torch, the one backend that runs them all) so that the modes differ in how they execute
chunks, not in how fast the chunks are computed; rtc's guided chunk costs more and that is part of
the comparison.

Writes into `--out` (default benchmarks/results/chunking_latency): `chunking_latency.json` (every
cell, rewritten after each, so an interrupted run keeps what it measured and a rerun skips the
cells it holds), `chunking_latency.md` (the table) and `chunking_latency.png` (success and jerk
against latency, one line per mode), plus each cell's eval JSON under `cells/`. A failed cell is
recorded with its error and the run goes on. `--replot` rewrites the table and plot from the JSON.

    # the full comparison (about 2 h on 2 CPU cores; needs a quiet machine: it runs in real time)
    python benchmarks/chunking_latency.py --episodes 20 --seeds test+1000
    # a smoke run: one episode per cell
    python benchmarks/chunking_latency.py --episodes 1 --latencies 0 200 --out /tmp/chunking_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402  benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
MODES = {  # name -> eval options
    "open_loop_0": ["--chunk-mode", "open_loop", "--request-threshold", "0"],
    "open_loop_0.5": ["--chunk-mode", "open_loop", "--request-threshold", "0.5"],
    "crossfade": ["--chunk-mode", "crossfade", "--request-threshold", "0.5"],
    "temporal_ensemble": ["--chunk-mode", "temporal_ensemble", "--request-threshold", "0.5"],
    "rtc": ["--chunk-mode", "rtc"],
}
COLORS = {  # BGR, for the plot
    "open_loop_0": (40, 40, 200), "open_loop_0.5": (60, 140, 240), "crossfade": (60, 160, 60),
    "temporal_ensemble": (170, 110, 40), "rtc": (150, 40, 150),
}


def run_cell(args, mode: str, latency: float, out: Path) -> dict:
    """One `evo1-ros eval` run; its numbers, or the error that stopped it."""
    cell_json = out / "cells" / f"{mode}_{latency:g}ms.json"
    command = [sys.executable, "-m", "evo1_ros.cli", "eval", "--checkpoint", args.checkpoint, "--task", args.task,
               "--episodes", str(args.episodes), "--seeds", args.seeds, "--max-seconds", str(args.max_seconds),
               "--fps", str(args.fps), "--backend", args.backend, "--extra-latency-ms", f"{latency:g}",
               *MODES[mode], "--out", str(cell_json), *(["--sim-time"] if args.sim_time else [])]
    cell = {"mode": mode, "extra_latency_ms": latency, "command": " ".join(command[1:])}
    start = time.monotonic()
    # Each episode runs at most max_seconds (plus a reset); the graph and the model start once.
    timeout = args.episodes * (args.max_seconds + 30) + 300
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        return {**cell, "error": f"timed out after {timeout} s"}
    cell["wall_seconds"] = round(time.monotonic() - start, 1)
    if proc.returncode != 0 or not cell_json.is_file():
        return {**cell, "error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    results = json.loads(cell_json.read_text())
    [run] = results["runs"]
    return {**cell, "inference": results["inference"], "seeds": results["seeds"], "clock": results["clock"],
            "success": run["success"], "mean_episode_seconds": run["mean_episode_seconds"],
            "mean_abs_jerk_rad_s3": run["mean_abs_jerk_rad_s3"], "largest_seam_jump_rad": run["largest_seam_jump_rad"],
            "stalls": run["stalls"], "stalls_per_episode": round(run["stalls"] / run["success"]["episodes"], 2),
            "achieved_control_rate_hz": run["achieved_control_rate_hz"],
            "target_control_rate_hz": results["target_control_rate_hz"],
            "inference_latency_ms": run["inference_latency_ms"]}


def fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def table(cells: list[dict]) -> str:
    lines = ["| mode | added latency (ms) | success | Wilson 95 % | mean episode (s) | mean \\|jerk\\| (rad/s³) "
             "| largest seam jump (rad) | stalls (per episode) | control rate (Hz) | inference p50 (ms) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        if "error" in c:
            lines.append(f"| {c['mode']} | {c['extra_latency_ms']:g} | failed: {c['error'][:80]!r} "
                         "| | | | | | | |")
            continue
        s = c["success"]
        lines.append(f"| {c['mode']} | {c['extra_latency_ms']:g} | {100 * s['rate']:.0f} % ({s['successes']} / "
                     f"{s['episodes']}) | {100 * s['wilson95'][0]:.0f}-{100 * s['wilson95'][1]:.0f} % "
                     f"| {fmt(c['mean_episode_seconds'], '.1f')} | {fmt(c['mean_abs_jerk_rad_s3'], '.1f')} "
                     f"| {fmt(c['largest_seam_jump_rad'], '.3f')} | {c['stalls']} ({c['stalls_per_episode']:.1f}) "
                     f"| {fmt(c['achieved_control_rate_hz'])} | {fmt(c['inference_latency_ms']['p50'], '.0f')} |")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    """Two panels, success rate (with its Wilson interval) and mean |jerk| against added latency, a
    line per mode; drawn with OpenCV (the sim extra has it), no plotting library needed."""
    import cv2

    done = [c for c in cells if "error" not in c]
    modes = [m for m in MODES if any(c["mode"] == m for c in done)]
    latencies = sorted({c["extra_latency_ms"] for c in done})
    if not modes:
        return
    width, height, margin = 560, 380, (70, 30, 40, 50)  # left, top, right, bottom
    jerks = [c["mean_abs_jerk_rad_s3"] for c in done if c["mean_abs_jerk_rad_s3"] is not None]
    panels = [("success rate", lambda c: c["success"]["rate"], 0.0, 1.0),
              ("mean |jerk| (rad/s^3)", lambda c: c["mean_abs_jerk_rad_s3"], 0.0, 1.1 * max(jerks or [1.0]))]
    legend_height = 24 * len(modes) + 16
    image = np.full((height + legend_height, width * len(panels), 3), 255, np.uint8)
    x_max = max(latencies[-1], 1.0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, (title, value, y_low, y_high) in enumerate(panels):
        x0, left, top = p * width, margin[0], margin[1]
        plot_w, plot_h = width - margin[0] - margin[2], height - margin[1] - margin[3]

        def xy(x, y):
            return (int(x0 + left + plot_w * x / x_max),
                    int(top + plot_h * (1 - (y - y_low) / ((y_high - y_low) or 1.0))))

        cv2.rectangle(image, (x0 + left, top), (x0 + left + plot_w, top + plot_h), (0, 0, 0), 1)
        cv2.putText(image, title, (x0 + left, top - 10), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for x in latencies:
            cv2.putText(image, f"{x:g}", (xy(x, y_low)[0] - 10, top + plot_h + 18), font, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
        cv2.putText(image, "added latency (ms)", (x0 + left + plot_w // 2 - 70, top + plot_h + 38), font, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        for i in range(5):
            y = y_low + (y_high - y_low) * i / 4
            cv2.putText(image, f"{y:.2f}" if y_high <= 1 else f"{y:.0f}", (x0 + 10, xy(0, y)[1] + 4), font, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
            cv2.line(image, (x0 + left, xy(0, y)[1]), (x0 + left + plot_w, xy(0, y)[1]), (225, 225, 225), 1)
        for m in modes:
            points = sorted((c["extra_latency_ms"], value(c), c) for c in done
                            if c["mode"] == m and value(c) is not None)
            pixels = [xy(x, y) for x, y, _ in points]
            for a, b in zip(pixels, pixels[1:]):
                cv2.line(image, a, b, COLORS[m], 2, cv2.LINE_AA)
            for (x, y, c), pixel in zip(points, pixels):
                cv2.circle(image, pixel, 4, COLORS[m], -1, cv2.LINE_AA)
                if p == 0:  # the Wilson 95 % interval
                    low, high = c["success"]["wilson95"]
                    cv2.line(image, xy(x, low), xy(x, high), COLORS[m], 1, cv2.LINE_AA)
    for i, m in enumerate(modes):
        y = height + 12 + 24 * i
        cv2.line(image, (margin[0], y), (margin[0] + 30, y), COLORS[m], 2, cv2.LINE_AA)
        cv2.putText(image, m, (margin[0] + 40, y + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def write(report: dict, out: Path) -> None:
    (out / "chunking_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "chunking_latency.md").write_text(table(report["cells"]) + "\n")
    plot(report["cells"], out / "chunking_latency.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "evo1-tiny-sim"))
    parser.add_argument("--task", default="pick_place_can")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per cell (default 20)")
    parser.add_argument("--seeds", default="test+1000", help="seed protocol range (default test+1000: seeds nobody "
                                                             "tuned on)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--latencies", nargs="+", type=float, default=[0, 100, 200, 400], help="added ms")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "auto"],
                        help="one backend for every cell (default torch; onnx cannot run rtc)")
    parser.add_argument("--fps", type=float, default=20.0, help="camera rate (default 20, as the checkpoint's evals)")
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--sim-time", action="store_true", help="on the sim's clock (smoke runs; the comparison "
                                                                "is real time)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "chunking_latency"))
    parser.add_argument("--replot", action="store_true", help="only rewrite the table and plot from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    path = out / "chunking_latency.json"
    if args.replot:
        write(json.loads(path.read_text()), out)
        print(table(json.loads(path.read_text())["cells"]))
        return 0
    if args.episodes < 1 or any(not np.isfinite(x) or x < 0 for x in args.latencies):
        parser.error("--episodes must be >= 1 and every latency a finite number of ms >= 0")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("checkpoint", "task", "episodes", "seeds", "backend", "fps",
                                              "max_seconds", "sim_time")}
    report = json.loads(path.read_text()) if path.is_file() else {}
    if report.get("settings") != settings:  # another run's cells do not mix with these
        report = {"settings": settings, "cells": []}
    report.update(command=" ".join(sys.argv), machine={"cpu": cpu_model(), "cores": os.cpu_count()},
                  date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    have = {(c["mode"], c["extra_latency_ms"]) for c in report["cells"] if "error" not in c}
    report["cells"] = [c for c in report["cells"] if (c["mode"], c["extra_latency_ms"]) in have]
    for mode in args.modes:
        for latency in args.latencies:
            if (mode, latency) in have:
                print(f"{mode} @ +{latency:g} ms: in {path} already", flush=True)
                continue
            print(f"{mode} @ +{latency:g} ms: {args.episodes} episodes ...", flush=True)
            cell = run_cell(args, mode, latency, out)
            report["cells"].append(cell)
            report["cells"].sort(key=lambda c: (list(MODES).index(c["mode"]), c["extra_latency_ms"]))
            write(report, out)
            print("  " + (f"FAILED: {cell['error'][-300:]}" if "error" in cell else
                          f"{cell['success']['successes']}/{cell['success']['episodes']}, stalls {cell['stalls']}, "
                          f"seam jump {fmt(cell['largest_seam_jump_rad'], '.3f')} rad, "
                          f"{cell['wall_seconds']:.0f} s"), flush=True)
    print(table(report["cells"]))
    print(f"wrote {path}, {out / 'chunking_latency.md'}, {out / 'chunking_latency.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
