"""Calling a ROS service and waiting for the answer, from a thread of our own.

The executor that spins the caller's node completes the call's future, so the wait must not run
on the executor's thread (a callback that waited would wait forever); every caller here is a
worker, key-reader or test thread.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

SERVICE_TIMEOUT_S = 10.0


class ServiceError(RuntimeError):
    """A service that is not there, did not answer in time, or said no; the text says which."""


def call(client, request=None, timeout: float = SERVICE_TIMEOUT_S, abort: Callable[[], bool] = lambda: False):
    """The service's response to `request` (default: an empty one); raises ServiceError when the
    service is not available or does not answer within `timeout` seconds, or once `abort()` is
    true (the caller is shutting down)."""
    if not client.wait_for_service(timeout_sec=timeout):
        raise ServiceError(f"service {client.srv_name} is not available")
    answered = threading.Event()
    future = client.call_async(client.srv_type.Request() if request is None else request)
    future.add_done_callback(lambda _: answered.set())
    deadline = time.monotonic() + timeout
    while not answered.wait(0.05):
        if abort():
            raise ServiceError(f"{client.srv_name}: no longer waiting (shutting down)")
        if time.monotonic() > deadline:
            raise ServiceError(f"service {client.srv_name} did not answer within {timeout:g} s")
    return future.result()


def call_checked(client, request=None, timeout: float = SERVICE_TIMEOUT_S,
                 abort: Callable[[], bool] = lambda: False) -> str:
    """`call` a service that answers success and message (std_srvs Trigger, SetBool); its message,
    or a ServiceError carrying it when success is false."""
    response = call(client, request, timeout, abort)
    if not response.success:
        raise ServiceError(f"{client.srv_name}: {response.message}")
    return response.message
