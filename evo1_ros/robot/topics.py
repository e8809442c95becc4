"""The topics the system talks on, named once: the arm's joint states, the trajectories the
driver follows, the instruction, operator interventions, and the cameras (realsense2_camera's naming, which our camera
and sim nodes follow). Nodes take these as their parameters' defaults; bags record them."""

from __future__ import annotations

JOINT_STATES = "/joint_states"
TRAJECTORY = "/evo1/joint_trajectory"
INSTRUCTION = "/evo1/instruction"
INTERVENTION = "/evo1/intervention"  # std_msgs/Bool: true while an operator overrides the policy
CAMERA_NAMESPACE = "camera"


def camera_topic(name: str, namespace: str = CAMERA_NAMESPACE, stream: str = "image_raw") -> str:
    """/<namespace>/<name>/color/<stream> (image_raw or camera_info); without a namespace /<name>/color/<stream>."""
    return f"/{namespace}/{name}/color/{stream}" if namespace else f"/{name}/color/{stream}"


def camera_frame(name: str) -> str:
    """The optical frame a camera's images are stamped with."""
    return f"{name}_color_optical_frame"
