"""`EmulatorProcess`: an `XArmEmulator` in a process of its own, driven from this one.

In a process of its own the emulated controller keeps its own timing whatever the client's
threads do with the GIL, as a real control box does: what timing tests and benchmarks need. It
is `evo1-ros xarm-emulator --control`, spoken to in JSON lines; the methods mirror XArmEmulator's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from evo1_ros.xarm_emulator.emulator import EmulatorConfig

START_TIMEOUT_S = 30.0


class EmulatorError(RuntimeError):
    """The emulator process refused a request or is gone; the text says why."""


class EmulatorProcess:
    def __init__(self, config: EmulatorConfig = EmulatorConfig()):
        self.config = config
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stderr: list[str] = []

    def start(self) -> "EmulatorProcess":
        c = self.config
        command = [sys.executable, "-m", "evo1_ros.cli", "xarm-emulator", "--control", "--ip", c.ip, "--arm", c.arm,
                   "--report-hz", f"{c.report_hz:g}", "--gripper-latency-ms", f"{c.gripper_latency_s * 1e3:g}",
                   "--realtime-priority", str(c.realtime_priority)]
        for fault in c.faults:
            command += ["--fault", fault]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
        # its log, kept for error messages (and drained, so the pipe never fills up)
        threading.Thread(target=lambda: self._stderr.extend(self._process.stderr), daemon=True).start()
        ready = [None]
        reader = threading.Thread(target=lambda: ready.__setitem__(0, self._process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        answer = self._decode(ready[0] or "")
        if answer is None or not answer.get("ok"):
            self.stop()
            why = answer.get("error") if answer else f"no answer within {START_TIMEOUT_S:g} s"
            raise EmulatorError(f"xArm emulator on {c.ip} did not start: {why}\n{''.join(self._stderr[-20:])}")
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        try:
            self._process.stdin.close()  # it stops when its commands end
            self._process.wait(timeout=5.0)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @staticmethod
    def _decode(line: str) -> dict | None:
        try:
            return json.loads(line)
        except ValueError:
            return None

    def _call(self, op: str, **arguments):
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                raise EmulatorError(f"the xArm emulator process is not running\n{''.join(self._stderr[-20:])}")
            self._process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            self._process.stdin.flush()
            answer = self._decode(self._process.stdout.readline())
        if answer is None:
            raise EmulatorError(f"the xArm emulator process ended\n{''.join(self._stderr[-20:])}")
        if not answer["ok"]:
            raise EmulatorError(answer["error"])
        return answer["result"]

    def inject(self, spec: str) -> str:
        return self._call("inject", fault=spec)

    def clear_faults(self) -> None:
        self._call("clear_faults")

    def guide(self, joints) -> None:
        self._call("guide", joints=[float(q) for q in joints])

    def status(self) -> dict:
        return self._call("status")

    def servo_targets(self, since: int = 0) -> list[list[float]]:
        return self._call("servo_targets", since=since)

    @property
    def log(self) -> str:
        return "".join(self._stderr)
