"""`XArmEmulator`: an emulated xArm control box on a loopback address, for the unmodified SDK.

It listens where the SDK connects (`XArmAPI(ip)`): TCP 502 for commands (several clients at once,
as the real box allows) and the report streams 30001 (normal, 5 Hz), 30002 (rich, 5 Hz) and 30003
(real-time, `report_hz`: 100 or 250 Hz). A cycle thread advances the `Controller` at the box's
250 Hz. Ports below 1024 need root or CAP_NET_BIND_SERVICE (README: "xArm controller emulator").

Faults (`inject`, or `EmulatorConfig.faults`; `FAULT_HELP` has the syntax) act at once or a chosen
number of seconds after the first servo target of the session.

Threads, not processes: in-process the emulator shares the GIL with its client. Tests and
benchmarks that care about timing run it in a process of its own (`EmulatorProcess`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from evo1_ros.robot import xarm6
from evo1_ros.xarm_emulator.arms import KinematicArm, SimArm
from evo1_ros.xarm_emulator.controller import CYCLE_S, Controller
from evo1_ros.xarm_emulator.protocol import (
    COMMAND_PORT,
    PRIVATE_PROTOCOLS,
    REPORT_PORTS,
    REPORTS,
    Register,
    reply,
    split_request,
)

log = logging.getLogger("evo1_ros.xarm_emulator")

ARMS = ("kinematic", "sim")
REPORT_RATES_HZ = (100.0, 250.0)  # the control box's real-time report rates
SLOW_REPORT_HZ = 5.0  # the normal and rich streams
GRIPPER_LATENCY_S = 0.008  # one register access through the RS-485 pass-through (bus + gripper)
SERVO_REPLY_DELAY_S = 0.19  # the set_servo_angle_j stall xArm users report
POLL_S = 0.05  # how often blocked connection threads look up from their socket
PORT_502_HINT = "ports below 1024 need root or CAP_NET_BIND_SERVICE: see the README's 'xArm controller emulator'"

FAULT_HELP = """faults: NAME[:VALUE][@SECONDS] (SECONDS after the first servo target; without it: at once)
  C22 C23 C24 C31 C35 (any C<code>)  the controller raises that error: the arm stops, mode 0, state 4
  W<code>                            the controller raises that warning (the arm keeps moving)
  close-socket                       every command connection is closed by the controller
  freeze-report[:SECONDS]            the report streams stop sending (for SECONDS; default until cleared)
  servo-reply-delay[:SECONDS]        the next set_servo_angle_j reply comes SECONDS late (default 0.19)
  gripper-delay[:SECONDS]            every gripper reply comes SECONDS later than usual (default 0.05)
  gripper-lost                       gripper requests get no reply (until cleared)"""


@dataclass(frozen=True)
class Fault:
    kind: str  # error | warning | close-socket | freeze-report | servo-reply-delay | gripper-delay | gripper-lost
    value: float = 0.0  # error/warning code, or seconds
    at: float | None = None  # seconds after the first servo target; None: at once

    def __str__(self) -> str:
        name = {"error": f"C{self.value:g}", "warning": f"W{self.value:g}"}.get(self.kind, self.kind)
        if self.kind not in ("error", "warning", "close-socket", "gripper-lost") and math.isfinite(self.value):
            name += f":{self.value:g}"
        return name + (f"@{self.at:g}" if self.at is not None else "")


_DEFAULT_SECONDS = {"freeze-report": math.inf, "servo-reply-delay": SERVO_REPLY_DELAY_S, "gripper-delay": 0.05}


def parse_fault(text: str) -> Fault:
    """'C24@2', 'W11', 'freeze-report:0.5@3', ... -> Fault; ValueError with the syntax otherwise."""
    spec, _, at_text = text.strip().partition("@")
    name, _, value_text = spec.partition(":")
    try:
        at = float(at_text) if at_text else None
        if at is not None and not (math.isfinite(at) and at >= 0):
            raise ValueError
        if name[:1] in ("C", "W") and name[1:].isdigit() and not value_text:
            code = int(name[1:])
            if not 0 < code < 256:
                raise ValueError
            return Fault("error" if name[0] == "C" else "warning", code, at)
        if name in ("close-socket", "gripper-lost") and not value_text:
            return Fault(name, 0.0, at)
        if name in _DEFAULT_SECONDS:
            value = float(value_text) if value_text else _DEFAULT_SECONDS[name]
            if not value > 0:
                raise ValueError
            return Fault(name, value, at)
    except ValueError:
        pass
    raise ValueError(f"bad fault {text!r}\n{FAULT_HELP}")


@dataclass(frozen=True)
class EmulatorConfig:
    ip: str = "127.0.0.1"
    arm: str = "kinematic"  # kinematic | sim (the MuJoCo world of evo1_ros.sim)
    report_hz: float = 100.0  # the real-time report stream (30003)
    faults: tuple[str, ...] = ()
    initial_joints: tuple[float, ...] = tuple(xarm6.HOME)
    gripper_latency_s: float = GRIPPER_LATENCY_S
    realtime_priority: int = 0  # SCHED_FIFO for the emulator's threads when > 0 and permitted

    def __post_init__(self):
        try:
            socket.inet_aton(self.ip)
        except OSError:
            raise ValueError(f"ip must be an IPv4 address such as 127.0.0.2, got {self.ip!r}") from None
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")
        if self.report_hz not in REPORT_RATES_HZ:
            raise ValueError(f"report_hz must be one of {REPORT_RATES_HZ} (the control box's rates), "
                             f"got {self.report_hz}")
        joints = np.asarray(self.initial_joints, dtype=float)
        if joints.shape != (xarm6.NUM_JOINTS,) or ((joints < xarm6.JOINT_LOWER) | (joints > xarm6.JOINT_UPPER)).any():
            raise ValueError(f"initial_joints must be {xarm6.NUM_JOINTS} angles within the joint limits")
        if not 0 <= self.gripper_latency_s < 1:
            raise ValueError("gripper_latency_s must be in [0, 1) s")
        for fault in self.faults:
            parse_fault(fault)


@dataclass
class _Disturbances:
    """The faults acting on the connections right now."""

    report_frozen_until: float = 0.0
    servo_reply_delay: float = 0.0  # one-shot
    gripper_delay: float = 0.0
    gripper_lost: bool = False
    close_generation: int = 0  # bumped to close every command connection open at that moment
    pending: list = field(default_factory=list)  # Faults waiting for their moment


def _realtime(priority: int) -> None:
    if priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except (AttributeError, OSError):
            pass


def free_loopback_address(tries: int = 50) -> str:
    """A loopback address 127.x.y.z, drawn at random so that the emulators of several users, tests
    or graphs on one machine do not meet, on which every controller port is free now. Raises
    PermissionError (saying what to do) where port 502 needs privileges this process lacks, OSError
    when no free address turns up."""
    draw = random.SystemRandom()
    for _ in range(tries):
        ip = f"127.{draw.randint(1, 254)}.{draw.randint(0, 255)}.{draw.randint(1, 254)}"
        probes = []
        try:
            for port in (COMMAND_PORT, *REPORT_PORTS.values()):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((ip, port))
            return ip
        except PermissionError:
            raise PermissionError(f"the xArm emulator listens on port {COMMAND_PORT} ({PORT_502_HINT})") from None
        except OSError:  # taken: try another address
            continue
        finally:
            for probe in probes:
                probe.close()
    raise OSError(f"no loopback address with the xArm controller's ports free after {tries} tries")


class XArmEmulator:
    def __init__(self, config: EmulatorConfig = EmulatorConfig(), world=None, speed: float = 1.0):
        """world: the SimWorld the `sim` arm drives (default: a new one), speed: its physics pace (sim
        seconds per wall second); both ignored by `kinematic`."""
        self.config = config
        if config.arm == "sim":
            if world is None:
                from evo1_ros.sim.world import SimWorld

                world = SimWorld(image_size=64)
            arm = SimArm(world, speed)
        else:
            arm = KinematicArm(config.initial_joints)
        self.controller = Controller(arm)
        self._faults = _Disturbances()
        self._lock = threading.Lock()  # guards _faults
        self._stop = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        for spec in config.faults:
            self.inject(spec)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "XArmEmulator":
        """Listen on every port and start the controller's cycle. Raises OSError in words."""
        ports = {"command": COMMAND_PORT, **REPORT_PORTS}
        try:
            for kind, port in ports.items():
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._listeners.append(listener)
                try:
                    listener.bind((self.config.ip, port))
                except OSError as e:
                    hint = f" ({PORT_502_HINT})" if port < 1024 and e.errno == 13 else ""
                    raise OSError(e.errno, f"cannot listen on {self.config.ip}:{port}: {e.strerror}{hint}") from None
                listener.listen(4)
                listener.settimeout(POLL_S)
                self._spawn(self._accept, listener, kind, name=f"xarm-emulator-{kind}")
        except OSError:
            self.stop()
            raise
        self._spawn(self._cycle, name="xarm-emulator-cycle")
        log.info("xArm controller emulator on %s (commands 502, reports 30001-30003), %s arm, real-time "
                 "reports %g Hz", self.config.ip, self.config.arm, self.config.report_hz)
        return self

    def stop(self) -> None:
        self._stop.set()
        for sock in self._listeners + list(self._connections):
            try:
                sock.close()
            except OSError:
                pass
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)
        self._threads.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, target, *args, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- what tests and users call --------------------------------------------------------------

    def inject(self, spec: str) -> str:
        """Schedule a fault (FAULT_HELP); returns it as understood."""
        fault = parse_fault(spec)
        with self._lock:
            self._faults.pending.append(fault)
        self._apply_due_faults()
        return str(fault)

    def clear_faults(self) -> None:
        """End the faults acting on the connections (frozen reports, gripper delays or losses) and
        drop the scheduled ones. Controller errors stay until the client clears them."""
        with self._lock:
            self._faults = _Disturbances(close_generation=self._faults.close_generation)

    def guide(self, joints) -> None:
        """Move the arm by hand, as in joint teaching mode (mode 2 only). Raises ValueError."""
        self.controller.guide(joints)

    def status(self) -> dict:
        """The controller's state (plain Python, JSON-able)."""
        c = self.controller
        s = c.snapshot()
        with c.lock:
            events = [[t, what] for t, what in c.events]
            servo_targets = len(c.servo_log)
        return {"state": s.state, "mode": s.mode, "error": s.error, "warning": s.warning,
                "motors_enabled": s.motors_enabled, "cmd_num": s.cmd_num,
                "joints": s.joints[: xarm6.NUM_JOINTS].tolist(),
                "velocities": s.velocities[: xarm6.NUM_JOINTS].tolist(), "gripper": c.gripper.position(),
                "gripper_target": c.gripper.target, "servo_targets": servo_targets,
                "connections": len(self._connections), "events": events, "time": c.clock()}

    def servo_targets(self, since: int = 0) -> list[list[float]]:
        """Accepted set_servo_angle_j targets from number `since` on: [time, j1..j6] each."""
        with self.controller.lock:
            log_ = list(self.controller.servo_log)
        return [[t, *map(float, q)] for t, q in log_[since:]]

    # --- faults ---------------------------------------------------------------------------------

    def _apply_due_faults(self) -> None:
        started = self.controller.first_servo_time
        now = self.controller.clock()
        with self._lock:
            due = [f for f in self._faults.pending if f.at is None or (started is not None and now >= started + f.at)]
            if not due:
                return
            self._faults.pending = [f for f in self._faults.pending if f not in due]
            for fault in due:
                log.info("fault: %s", fault)
                if fault.kind == "error":
                    self.controller.raise_error(int(fault.value))
                elif fault.kind == "warning":
                    self.controller.set_warning(int(fault.value))
                elif fault.kind == "close-socket":
                    self._faults.close_generation += 1
                elif fault.kind == "freeze-report":
                    self._faults.report_frozen_until = now + fault.value
                elif fault.kind == "servo-reply-delay":
                    self._faults.servo_reply_delay = fault.value
                elif fault.kind == "gripper-delay":
                    self._faults.gripper_delay = fault.value
                elif fault.kind == "gripper-lost":
                    self._faults.gripper_lost = True

    # --- threads --------------------------------------------------------------------------------

    def _cycle(self) -> None:
        _realtime(self.config.realtime_priority)
        last = deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += CYCLE_S
            time.sleep(max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            self.controller.cycle(now - last)
            last = now
            self._apply_due_faults()
            if now - deadline > 10 * CYCLE_S:  # stalled (a loaded machine): do not burst to catch up
                deadline = now

    def _accept(self, listener: socket.socket, kind: str) -> None:
        while not self._stop.is_set():
            try:
                connection, peer = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connections.add(connection)
            log.info("%s client connected from %s:%d", kind, *peer)
            target = self._serve_commands if kind == "command" else self._stream_reports
            self._spawn(target, connection, kind, name=f"xarm-emulator-{kind}-client")

    def _serve_commands(self, connection: socket.socket, kind: str) -> None:
        _realtime(self.config.realtime_priority)
        generation = self._faults.close_generation
        connection.settimeout(POLL_S)
        buffer = b""
        try:
            while not self._stop.is_set():
                if self._faults.close_generation != generation:
                    log.info("closing a command connection (fault)")
                    return
                try:
                    data = connection.recv(4096)
                except socket.timeout:
                    continue
                if not data:
                    return
                buffer += data
                while True:
                    request, buffer = split_request(buffer)
                    if request is None:
                        break
                    answer = self._answer(request)
                    if answer is not None:
                        connection.sendall(answer)
        except OSError:
            pass
        finally:
            self._connections.discard(connection)
            connection.close()

    def _answer(self, request) -> bytes | None:
        if request.protocol not in PRIVATE_PROTOCOLS:
            return None  # the SDK's heartbeat (protocol 1) and standard Modbus-TCP: not emulated
        if request.register == Register.RS485_RTU:  # the gripper answers over the bus, after a while or never
            if self._faults.gripper_lost:
                return None
            time.sleep(self.config.gripper_latency_s + self._faults.gripper_delay)
        status, payload = self.controller.handle(request.register, request.payload)
        if request.register == Register.MOVE_SERVOJ:  # the target is taken at once; only the reply is late
            with self._lock:
                delay, self._faults.servo_reply_delay = self._faults.servo_reply_delay, 0.0
            time.sleep(delay)
        return reply(request, status, payload)

    def _stream_reports(self, connection: socket.socket, kind: str) -> None:
        _realtime(self.config.realtime_priority)
        pack = REPORTS[kind]
        period = 1.0 / (self.config.report_hz if kind == "real" else SLOW_REPORT_HZ)
        deadline = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() >= self._faults.report_frozen_until:
                    connection.sendall(pack(self.controller.snapshot()))
                deadline = max(deadline + period, time.monotonic() - period)  # late: skip, do not burst
                time.sleep(max(0.0, deadline - time.monotonic()))
        except OSError:
            pass
        finally:
            self._connections.discard(connection)
            connection.close()
