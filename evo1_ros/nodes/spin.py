"""Running nodes until Ctrl-C or SIGTERM, the same way for every executable.

rclpy's own signal handler shuts the context down under running threads: the driver's servo
thread then dies before it can stop the arm. So the signals are taken here instead: they end
the spin with KeyboardInterrupt, a second Ctrl-C is ignored while the nodes are destroyed in
reverse order (the inference node stops sending before the driver halts the arm), and only then
is rclpy shut down.
"""

from __future__ import annotations

import signal
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def run_nodes(build: Callable[[], list[Node]], name: str, args=None, threads: int | None = None) -> int:
    """Build the nodes, spin them until interrupted (threads=1: single-threaded); exit status.
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
        if threads == 1:
            # With rclpy Jazzy's MultiThreadedExecutor, even at one thread, the recorder's raw
            # subscriptions lost most messages in our tests; the single-threaded executor serves all.
            executor = SingleThreadedExecutor()
        else:  # a thread per node's timers, plus spare ones so a control timer never waits behind images
            executor = MultiThreadedExecutor(num_threads=threads or len(nodes) + 2)
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
