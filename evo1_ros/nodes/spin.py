"""Running nodes until Ctrl-C or SIGTERM, the same way for every executable.

rclpy's own signal handler shuts the context down under running threads: the driver's servo
thread then dies before it can stop the arm. So the signals are taken here instead: they end
the spin with KeyboardInterrupt, a second Ctrl-C is ignored while the nodes are destroyed in
reverse order (the inference node stops sending before the driver halts the arm), and only then
is rclpy shut down.

Every process spins on one SingleThreadedExecutor. rclpy's MultiThreadedExecutor rebuilds its
wait set in Python for every callback and polls every task it handed out, holding the GIL: with
two cameras, joint states and a 30 Hz control timer it took a whole core and stalled the
control timer for seconds (benchmarks/observation_to_action.py --executor both; figures in
benchmarks/RESULTS.md), where one thread kept every window within 5 ms of its period. Our
callbacks only store or publish a message; the long work (inference, servoing, camera streams,
physics) runs on threads of its own.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable, Iterable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def run_nodes(build: Callable[[], list[Node]], name: str, args=None,
              foreground: Callable[[list[Node]], None] | None = None) -> int:
    """Build the nodes, spin them until interrupted; exit status. With `foreground` (e.g. reading
    the terminal's keys) the nodes spin on a thread while `foreground(nodes)` runs on this one, and
    its return ends the run as an interrupt does.
    A ValueError/RuntimeError while building is a configuration problem: one fatal line, status 1."""
    # A signal while the nodes are built is kept for afterwards: an interrupt inside a half-built
    # node (a C call of rclpy's cut short) could leave it unable to be destroyed.
    deferred: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda received, _frame: deferred.append(received))
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    nodes: list[Node] = []
    spinner = None
    try:
        try:
            nodes = build()
        except (ValueError, RuntimeError) as e:
            rclpy.logging.get_logger(name).fatal(str(e))
            return 1
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.default_int_handler)
        if deferred:
            raise KeyboardInterrupt
        if foreground is None:
            executor = SingleThreadedExecutor()
            for node in nodes:
                executor.add_node(node)
            executor.spin()
        else:
            spinner = SpinThread(nodes, name=name)
            foreground(nodes)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if spinner is not None:  # no callback may run on a destroyed node
            spinner.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the teardown short
            signal.signal(signum, signal.SIG_IGN)
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


class SpinThread:
    """`nodes` spinning on one SingleThreadedExecutor in a thread of its own, until `stop()`: for
    in-process graphs (demo, eval, recording) and tests. More nodes may join with `add_node`.

    A loop of spin_once rather than spin(), so that stop() can end it before the nodes are
    destroyed: rclpy Jazzy's Executor.shutdown under a running spin() destroys the guard
    condition without waiting for callbacks in flight, which then raise in the spin thread."""

    def __init__(self, nodes: Iterable[Node], context=None, name: str = "spin"):
        self.executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add_node(self, node: Node) -> None:
        self.executor.add_node(node)

    def _run(self) -> None:
        while self._running.is_set():
            self.executor.spin_once(timeout_sec=0.1)

    def stop(self, timeout: float = 5.0) -> None:
        """End the spin (no callback runs after this returns) and release the executor."""
        self._running.clear()
        self._thread.join(timeout)
        self.executor.shutdown()
