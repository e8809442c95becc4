"""Servo loop timing under inference load: period jitter p50/p99/max at 100 and 250 Hz.

Runs the driver's real `ServoLoop` (safety filter + interpolation + FakeBackend, no ROS) on its
own thread while a second thread does what inference does to a CPU: back-to-back torch matmuls
on all cores (the GIL is released inside them) plus a little Python between calls (which is not).
A third thread re-sends a trajectory at 30 Hz, like the inference node. Jitter is
|actual period - nominal period| between consecutive servo wake-ups.

    python benchmarks/control_loop.py [--seconds 10] [--rates 100 250] [--realtime-priority 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import torch

from evo1_ros.robot import xarm6
from machine import cpu_model  # benchmarks/machine.py, beside this script
from evo1_ros.robot.backends import FakeBackend
from evo1_ros.runtime import servo
from evo1_ros.runtime.safety import SafetyLimits
from evo1_ros.runtime.servo import ServoLoop


def inference_load(stop: threading.Event, size: int) -> None:
    a, b = torch.randn(size, size), torch.randn(size, size)
    while not stop.is_set():
        c = a @ b
        # pre/post-processing in Python holds the GIL, unlike the matmul
        sum(float(x) for x in c[0, :64])


def policy_publisher(loop: ServoLoop, stop: threading.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        now = loop.clock()
        times = now + np.arange(1, 17) / 30.0
        phase = 2 * np.pi * 0.25 * (times - t0)[:, None]
        points = np.hstack([xarm6.HOME + 0.3 * np.sin(phase + np.arange(6)), 0.4 + 0.3 * np.sin(phase)])
        loop.submit(times, points)
        time.sleep(1 / 30.0)


def measure(rate_hz: float, seconds: float, load: bool, matmul_size: int, realtime_priority: int) -> dict:
    loop = ServoLoop(FakeBackend(), SafetyLimits(), rate_hz, realtime_priority=realtime_priority)
    loop.connect()
    stop = threading.Event()
    workers = [threading.Thread(target=policy_publisher, args=(loop, stop), daemon=True)]
    if load:
        workers.append(threading.Thread(target=inference_load, args=(stop, matmul_size), daemon=True))
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # let the load settle before the loop starts
    loop.wake_times.clear()
    loop.start()
    time.sleep(seconds)
    wake_times = np.array(loop.wake_times)
    loop.shutdown()
    stop.set()
    for worker in workers:
        worker.join()
    status = loop.status()
    jitter_ms = np.abs(np.diff(wake_times) - 1.0 / rate_hz) * 1e3
    return {
        "rate_hz": rate_hz, "load": "torch matmul thread" if load else "none", "ticks": len(wake_times),
        "jitter_p50_ms": float(np.percentile(jitter_ms, 50)), "jitter_p99_ms": float(np.percentile(jitter_ms, 99)),
        "jitter_max_ms": float(jitter_ms.max()), "overruns": status.overruns, "realtime": status.realtime,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row")
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 250.0])
    parser.add_argument("--matmul-size", type=int, default=512)
    parser.add_argument("--spin-ms", type=float, default=servo.SPIN_S * 1e3,
                        help="busy-wait before each deadline (the loop's default; 0 = sleep only)")
    parser.add_argument("--realtime-priority", type=int, default=50,
                        help="SCHED_FIFO priority for the servo thread (the driver's default; 0 = normal)")
    parser.add_argument("--json", help="write the rows and the machine description here")
    args = parser.parse_args()
    servo.SPIN_S = args.spin_ms / 1e3
    # The timing window holds TIMING_WINDOW ticks; keep every tick of the run instead.
    servo.TIMING_WINDOW = int(max(args.rates) * (args.seconds + 1))

    rows = [measure(rate, args.seconds, load, args.matmul_size, args.realtime_priority)
            for rate in args.rates for load in (False, True)]
    print(f"{'rate':>6} {'load':<20} {'fifo':<5} {'ticks':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'overruns':>8}")
    for r in rows:
        print(f"{r['rate_hz']:>6.0f} {r['load']:<20} {str(r['realtime']):<5} {r['ticks']:>6} {r['jitter_p50_ms']:>7.3f} "
              f"{r['jitter_p99_ms']:>7.3f} {r['jitter_max_ms']:>7.3f} {r['overruns']:>8}")
    if args.json:
        machine = {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "python": platform.python_version(),
                   "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
                       "spin_ms": args.spin_ms, "realtime_priority": args.realtime_priority,
                       "seconds": args.seconds, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
