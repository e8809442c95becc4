"""Servo loop timing: period jitter p50/p99/max at 100 and 250 Hz, on the fake arm under inference
load, or through the xArm SDK to the controller emulator with and without gripper traffic.

Runs the driver's real `ServoLoop` (safety filter + interpolation + a backend, no ROS) on its own
thread while a second thread re-sends a trajectory at 30 Hz, like the inference node. Jitter is
|actual period - nominal period| between consecutive servo wake-ups.

`--backend fake`: each rate alone and beside a thread that does what inference does to a CPU:
back-to-back torch matmuls on all cores (the GIL is released inside them) plus a little Python
between calls (which is not).

`--backend xarm_sdk`: the `xarm_sdk` backend through the unmodified XArmAPI to an xArm controller
emulator in a process of its own (`evo1-ros xarm-emulator`, its real-time reports at the servo
rate), each rate with the gripper still and with a new gripper target every 100 ms. Also the
round trip of every `set_servo_angle_j` call (p50/p99/max). Needs port 502 (root or
CAP_NET_BIND_SERVICE).

    python benchmarks/control_loop.py [--backend fake|xarm_sdk] [--seconds 10] [--rates 100 250]
        [--realtime-priority 50] [--ip 127.0.0.2] [--json OUT]
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
from evo1_ros.runtime.safety import SafetyLimits, TrajectoryRejected
from evo1_ros.runtime.servo import ServoLoop


def inference_load(stop: threading.Event, size: int) -> None:
    a, b = torch.randn(size, size), torch.randn(size, size)
    while not stop.is_set():
        c = a @ b
        # pre/post-processing in Python holds the GIL, unlike the matmul
        sum(float(x) for x in c[0, :64])


def policy_publisher(loop: ServoLoop, stop: threading.Event, gripper_steps: bool) -> None:
    """Sine-wave joints; the gripper on a slow sine, or a new target every 100 ms (`gripper_steps`)."""
    t0 = time.monotonic()
    while not stop.is_set():
        now = loop.clock()
        times = now + np.arange(1, 17) / 30.0
        phase = 2 * np.pi * 0.25 * (times - t0)[:, None]
        if gripper_steps:  # alternating between two targets 0.1 s apart: one gripper command per 100 ms
            gripper = np.where(np.floor((times - t0) / 0.1) % 2 == 0, 0.2, 0.6)[:, None]
        else:
            gripper = 0.4 + 0.3 * np.sin(phase)
        points = np.hstack([xarm6.HOME + 0.3 * np.sin(phase + np.arange(6)), gripper])
        try:
            loop.submit(times, points)
        except TrajectoryRejected:  # a fault: the row records it
            pass
        time.sleep(1 / 30.0)


def percentiles(values_ms) -> dict:
    values_ms = np.asarray(values_ms)
    return {"p50_ms": float(np.percentile(values_ms, 50)), "p99_ms": float(np.percentile(values_ms, 99)),
            "max_ms": float(values_ms.max())}


def timed(call, durations: list):
    """`call`, recording how long each call takes."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)
    return wrapper


def measure(loop: ServoLoop, rate_hz: float, seconds: float, gripper_steps: bool, load_size: int = 0) -> dict:
    """Run `loop` (connected) for `seconds` with a policy publisher and optional torch load."""
    loop.activate()
    stop = threading.Event()
    workers = [threading.Thread(target=policy_publisher, args=(loop, stop, gripper_steps), daemon=True)]
    if load_size:
        workers.append(threading.Thread(target=inference_load, args=(stop, load_size), daemon=True))
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # let the load settle before the loop starts
    loop.wake_times.clear()
    loop.start()
    time.sleep(seconds)
    wake_times = np.array(loop.wake_times)
    stop.set()
    for worker in workers:
        worker.join()
    status, backend = loop.status(), loop.backend_diagnostics()
    loop.shutdown()
    jitter = percentiles(np.abs(np.diff(wake_times) - 1.0 / rate_hz) * 1e3)
    return {"rate_hz": rate_hz, "ticks": len(wake_times), **{f"jitter_{k}": v for k, v in jitter.items()},
            "overruns": status.overruns, "realtime": status.realtime, "fault": status.fault, "backend": backend}


def fake_rows(args) -> list[dict]:
    rows = []
    for rate in args.rates:
        for load in (False, True):
            loop = ServoLoop(FakeBackend(), SafetyLimits(), rate, realtime_priority=args.realtime_priority)
            loop.connect()
            row = measure(loop, rate, args.seconds, gripper_steps=False, load_size=args.matmul_size if load else 0)
            rows.append({**row, "condition": "torch matmul thread" if load else "none"})
    return rows


def xarm_sdk_rows(args) -> list[dict]:
    from evo1_ros.robot.backends import XArmSdkBackend
    from evo1_ros.xarm_emulator import EmulatorConfig, EmulatorProcess

    rows = []
    for rate in args.rates:
        # the emulated control box in a process of its own, as the real one is a machine of its own
        config = EmulatorConfig(ip=args.ip, report_hz=rate, realtime_priority=max(args.realtime_priority - 10, 0))
        for gripper_steps in (False, True):
            with EmulatorProcess(config):
                backend = XArmSdkBackend(args.ip)
                loop = ServoLoop(backend, SafetyLimits(), rate, realtime_priority=args.realtime_priority)
                if not loop.connect():
                    raise SystemExit(f"control_loop: {loop.status().fault}")
                round_trips = []
                backend.arm.set_servo_angle_j = timed(backend.arm.set_servo_angle_j, round_trips)
                row = measure(loop, rate, args.seconds, gripper_steps)
            rows.append({**row, "condition": "gripper every 100 ms" if gripper_steps else "gripper still",
                         **{f"servoj_round_trip_{k}": v for k, v in percentiles(np.array(round_trips) * 1e3).items()}})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["fake", "xarm_sdk"], default="fake",
                        help="fake: the kinematic arm under inference load; xarm_sdk: through the SDK to the emulator")
    parser.add_argument("--ip", default="127.0.0.2", help="xarm_sdk: loopback address for the emulator")
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

    rows = fake_rows(args) if args.backend == "fake" else xarm_sdk_rows(args)
    print(f"backend {args.backend}; jitter = |period - nominal|; round trip = one set_servo_angle_j call")
    print(f"{'rate':>6} {'condition':<22} {'fifo':<5} {'ticks':>6} {'jitter p50':>10} {'p99':>7} {'max':>7} "
          f"{'overruns':>8} {'servoj p50':>10} {'p99':>7} {'max':>7}")
    for r in rows:
        servoj = (f"{r['servoj_round_trip_p50_ms']:>10.3f} {r['servoj_round_trip_p99_ms']:>7.3f} "
                  f"{r['servoj_round_trip_max_ms']:>7.3f}" if "servoj_round_trip_p50_ms" in r else "")
        print(f"{r['rate_hz']:>6.0f} {r['condition']:<22} {str(r['realtime']):<5} {r['ticks']:>6} "
              f"{r['jitter_p50_ms']:>10.3f} {r['jitter_p99_ms']:>7.3f} {r['jitter_max_ms']:>7.3f} {r['overruns']:>8} "
              f"{servoj}" + (f"  FAULT: {r['fault']}" if r["fault"] else ""))
    if args.json:
        machine = {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "python": platform.python_version(),
                   "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
                       "backend": args.backend, "spin_ms": args.spin_ms, "realtime_priority": args.realtime_priority,
                       "seconds": args.seconds, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
