"""`evo1-ros xarm-emulator`: an emulated xArm6 control box for the unmodified xArm SDK.

    sudo .venv/bin/evo1-ros xarm-emulator --ip 127.0.0.2 [--arm kinematic|sim] [--report-hz 100|250]
        [--fault C24@5] [--fault gripper-delay:0.05] ...

then, in another shell, `XArmAPI("127.0.0.2", is_radian=True, report_type="real")` or the driver
with `backend:=xarm_sdk robot_ip:=127.0.0.2`. With `--control` it reads one JSON command per line
on stdin and answers on stdout (what `EmulatorProcess` speaks); it ends when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from evo1_ros.xarm_emulator.emulator import ARMS, FAULT_HELP, GRIPPER_LATENCY_S, REPORT_RATES_HZ

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = FAULT_HELP
    parser.add_argument("--ip", required=True, help="loopback address to listen on, e.g. 127.0.0.2 "
                                                    "(one emulated controller per address)")
    parser.add_argument("--arm", choices=ARMS, default="kinematic",
                        help="kinematic: moves exactly as commanded; sim: the MuJoCo xArm6 of evo1_ros.sim")
    parser.add_argument("--report-hz", type=float, choices=REPORT_RATES_HZ, default=REPORT_RATES_HZ[0],
                        help="rate of the real-time report stream (port 30003)")
    parser.add_argument("--fault", action="append", default=[], metavar="FAULT", help="inject a fault (below)")
    parser.add_argument("--gripper-latency-ms", type=float, default=GRIPPER_LATENCY_S * 1e3,
                        help="round trip of one gripper register access through the RS-485 pass-through")
    parser.add_argument("--realtime-priority", type=int, default=0,
                        help="SCHED_FIFO priority for the emulator's threads where permitted (0: normal)")
    parser.add_argument("--control", action="store_true",
                        help="take JSON commands on stdin, answer on stdout (for EmulatorProcess)")


def _serve_control(emulator) -> None:
    """One JSON object per line in ({"op": ..., ...}), one out ({"ok": ..., "result"|"error": ...})."""
    ops = {
        "inject": lambda r: emulator.inject(r["fault"]),
        "clear_faults": lambda r: emulator.clear_faults(),
        "guide": lambda r: emulator.guide(r["joints"]),
        "status": lambda r: emulator.status(),
        "servo_targets": lambda r: emulator.servo_targets(r.get("since", 0)),
    }
    for line in sys.stdin:
        try:
            request = json.loads(line)
            answer = {"ok": True, "result": ops[request["op"]](request)}
        except (ValueError, KeyError, TypeError) as e:
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


def run(args: argparse.Namespace) -> int:
    from evo1_ros.xarm_emulator.emulator import EmulatorConfig, XArmEmulator

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[xarm-emulator] %(message)s")
    try:
        config = EmulatorConfig(ip=args.ip, arm=args.arm, report_hz=args.report_hz, faults=tuple(args.fault),
                                gripper_latency_s=args.gripper_latency_ms / 1e3,
                                realtime_priority=args.realtime_priority)
        emulator = XArmEmulator(config).start()
    except (ValueError, OSError) as e:
        print(f"evo1-ros xarm-emulator: {e}", file=sys.stderr)
        if args.control:
            print(json.dumps({"ok": False, "error": str(e)}), flush=True)
        return 2
    try:
        if args.control:
            print(json.dumps({"ok": True, "result": "ready"}), flush=True)
            _serve_control(emulator)
        else:
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            while True:  # until Ctrl-C or SIGTERM
                signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0
