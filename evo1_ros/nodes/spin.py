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
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def run_nodes(build: Callable[[], list[Node]], name: str, args=None) -> int:
    """Build the nodes, spin them until interrupted; exit status.
    A ValueError/RuntimeError while building is a configuration problem: one fatal line, status 1."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    nodes: list[Node] = []
    try:
        try:
            nodes = build()
        except (ValueError, RuntimeError) as e:
            rclpy.logging.get_logger(name).fatal(str(e))
            return 1
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
