"""Node parameters declared one way: each with a description (`ros2 param describe`), read-only
unless the node can use a new value while it runs, and every run-time change either applied or
refused with the reason — never accepted and ignored.

A node module lists its parameters as `PARAMETERS = {name: Param(default, description, ...)}`:
- by default read-only: set at start (params file, launch overrides); `ros2 param set` is refused
  by rclpy;
- `apply="<method>"`: a set calls `node.<method>(value)` before the value is stored; it returns
  None once the node uses the value, or a sentence saying why the value is refused (then nothing
  changes);
- `read_when_used=True`: the node reads the parameter each time it needs it (e.g. at every
  episode start), so any value of its type takes effect from then on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class Param:
    default: Any  # the value, or a Parameter.Type where there is no sensible default
    description: str
    apply: str | None = None  # the node method taking run-time changes (module doc)
    read_when_used: bool = False  # the node reads it afresh at each use (module doc)

    @property
    def read_only(self) -> bool:
        return self.apply is None and not self.read_when_used


def declare(node: Node, table: dict[str, Param]) -> dict[str, Any]:
    """Declare `table`'s parameters on `node` and return their starting values by name."""
    for name, param in table.items():
        node.declare_parameter(name, param.default,
                               ParameterDescriptor(description=param.description, read_only=param.read_only))
    appliers = {name: getattr(node, param.apply) for name, param in table.items() if param.apply}
    if appliers:
        node.add_on_set_parameters_callback(lambda params: _apply(appliers, params))
    # get_parameter_or: a typed parameter left unset reads None (get_parameter would raise)
    return {name: node.get_parameter_or(name).value for name in table}


def _apply(appliers: dict, params: list[Parameter]) -> SetParametersResult:
    for param in params:
        apply = appliers.get(param.name)
        if apply is None:  # declared elsewhere (use_sim_time), or read-only: rclpy refused it already
            continue
        reason = apply(param.value)
        if reason is not None:
            return SetParametersResult(successful=False, reason=f"{param.name}: {reason}")
    return SetParametersResult(successful=True)


def not_positive(value) -> str | None:
    """Why `value` is not a finite number above zero; None when it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        return f"must be a number above 0, not {value!r}"
    return None
