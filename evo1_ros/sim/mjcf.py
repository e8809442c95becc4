"""The MuJoCo scene, written from `robot/xarm6.py`: xArm6 + parallel gripper, table, cameras, and
every object a task or scene variation uses: two cans, a box, a cup, a target marker, a distractor.

World frame = `link_base`: the arm is bolted to the table top at the origin, so joint angles, FK
and object poses share one frame. Geometry is simple capsules and boxes; the kinematics are exact.

One model holds them all, so one process can switch task and scene from episode to episode (`evo1-ros
eval --task all`, `record-sim --scene mix`): a reset shows the objects its episode uses and parks
the others out of sight and out of reach (`sim/world.py`). The lighting scene's table materials are
assets here too; what a scene varies per seed (lights, table, camera poses) is set on the compiled
model (`sim/scenes.py`).
"""

from __future__ import annotations

import numpy as np

from evo1_ros.robot.xarm6 import (
    GRIPPER_CLOSED,
    JOINT_LOWER,
    JOINT_NAMES,
    JOINT_ORIGINS,
    JOINT_UPPER,
    TCP_OFFSET_WITH_GRIPPER,
)

TIMESTEP = 0.002  # s; 500 Hz physics
GRIPPER_STROKE = 0.085  # m, fully open jaw width of the xArm gripper
FINGER_TRAVEL = GRIPPER_STROKE / 2  # m per finger, open -> closed
CAN_RADIUS, CAN_HEIGHT = 0.033, 0.12  # a 330 ml drink can
BOX_INNER, BOX_WALL, BOX_HEIGHT = 0.08, 0.008, 0.07  # half inner width, wall thickness, wall height
CUP_RADIUS, CUP_HEIGHT, CUP_WALL = 0.034, 0.11, 0.004  # a plastic cup, open at the top (its +z)
TARGET_RADIUS = 0.055  # the marked disc of the hand-delivery task
DISTRACTOR_HALF = (0.025, 0.025, 0.03)  # a block: another shape and colour than any task object
CAMERAS = ("base", "wrist")
# Bodies with a free joint, and the target (a mocap marker drawn on the table).
FREE_OBJECTS = ("can", "can2", "box", "cup", "distractor")
OBJECTS = (*FREE_OBJECTS, "target")
TABLE_MATERIALS = ("wood", "table_dark", "table_pale", "table_checker", "table_speckle")
# Per object: its origin's height above the table standing upright, and the radius of a circle
# around its footprint (for keeping objects apart; the box's at any yaw).
REST_HEIGHT = {"can": CAN_HEIGHT / 2, "can2": CAN_HEIGHT / 2, "box": 0.0, "cup": CUP_HEIGHT / 2,
               "distractor": DISTRACTOR_HALF[2], "target": 0.0}
FOOTPRINT = {"can": CAN_RADIUS, "can2": CAN_RADIUS, "box": (BOX_INNER + BOX_WALL) * 2**0.5, "cup": CUP_RADIUS,
             "distractor": (DISTRACTOR_HALF[0] ** 2 + DISTRACTOR_HALF[1] ** 2) ** 0.5, "target": TARGET_RADIUS}

# Link geometry, per link in its own frame: capsules (from, to, radius) between joint origins, so
# the shapes follow JOINT_ORIGINS automatically.
_ELBOW_TO_WRIST = JOINT_ORIGINS[3][0]  # link3 is L-shaped: along x, then along y to joint4
_LINK_CAPSULES = {
    "link1": [((0, 0, -0.14), (0, 0, 0.0), 0.05)],
    "link2": [((0, 0, 0), JOINT_ORIGINS[2][0], 0.045)],
    "link3": [((0, 0, 0), (_ELBOW_TO_WRIST[0], 0, 0), 0.04), ((_ELBOW_TO_WRIST[0], 0, 0), _ELBOW_TO_WRIST, 0.04)],
    "link4": [],
    "link5": [((0, 0, 0), JOINT_ORIGINS[5][0], 0.037)],
}
# Stiff position servos, a little over-damped (dampratio 1.3) so that even torque-limited steps do
# not overshoot. Like the real controller they compensate gravity (gravcomp on every arm body), so
# steady-state error comes only from contact loads.
_ARM_KP = (1500, 1500, 1000, 300, 300, 150)  # N m / rad
_ARM_FORCE = (50, 50, 32, 32, 32, 20)  # N m, xArm6 joint torque ballpark
_FINGER_KP, _FINGER_FORCE = 2000.0, 40.0  # N / m, N: ~40 N grip, like the xArm gripper


def _v(values) -> str:
    return " ".join(f"{float(x):.12g}" for x in values)


def _xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> str:
    """MuJoCo camera orientation (x right, y up, looking along -z) that looks from pos at target."""
    forward = np.subtract(target, pos, dtype=float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    return _v([*right, *np.cross(right, forward)])


def _capsules(name: str) -> str:
    return "".join(
        f'<geom class="link" type="capsule" fromto="{_v(a)} {_v(b)}" size="{r}"/>'
        for a, b, r in _LINK_CAPSULES[name]
    )


def _arm() -> str:
    """link1..link6 nested as in the URDF: each body sits at its joint origin (xyz + URDF rpy)."""
    xml_open, xml_close = [], []
    for i, ((xyz, rpy), joint) in enumerate(zip(JOINT_ORIGINS, JOINT_NAMES)):
        link = f"link{i + 1}"
        body = (
            f'<body name="{link}" pos="{_v(xyz)}" euler="{_v(rpy)}" gravcomp="1">'
            f'<joint name="{joint}" range="{_v((JOINT_LOWER[i], JOINT_UPPER[i]))}"/>'
            # a motor housing around every joint axis, for looks
            f'<geom class="housing" type="cylinder" size="0.048 0.055"/>'
        )
        xml_open.append(body + (_capsules(link) if link != "link6" else _gripper()))
        xml_close.append("</body>")
    return "".join(xml_open) + "".join(reversed(xml_close))


def _gripper() -> str:
    """Flange, palm and two fingers sliding along link6's y. Jaw pads are centred on link_tcp."""
    tcp = TCP_OFFSET_WITH_GRIPPER
    camera = (0.08, 0.0, 0.1)
    fingers = []
    for side, sign in (("left", 1), ("right", -1)):
        fingers.append(
            f'<body name="{side}_finger" pos="0 {sign * FINGER_TRAVEL:.6g} {tcp}" gravcomp="1">'
            f'<joint name="{side}_finger" class="finger_joint" type="slide" axis="0 {-sign} 0" '
            f'range="0 {FINGER_TRAVEL:.6g}"/>'
            f'<geom class="pad" type="box" size="0.011 0.005 0.022" pos="0 {sign * 0.005} 0"/>'
            f'<geom class="grip" type="box" size="0.011 0.006 0.022" pos="0 {sign * 0.016} -0.036"/>'
            "</body>"
        )
    return (
        '<site name="tcp" pos="0 0 %g" group="4"/>' % tcp
        + '<geom class="grip" type="cylinder" size="0.04 0.012" pos="0 0 0.012"/>'
        + '<geom class="grip" type="box" size="0.028 0.065 0.04" pos="0 0 0.064"/>'
        # a RealSense-like wrist camera on the palm, looking down the jaws at the TCP
        + '<geom class="camera" type="box" size="0.0125 0.045 0.0125" pos="0.066 0 0.1"/>'
        + f'<camera name="wrist" pos="{_v(camera)}" fovy="65" '
        f'xyaxes="{_xyaxes(camera, (0, 0, tcp + 0.13), up=(1, 0, 0))}"/>'
        + "".join(fingers)
    )


def _table_legs() -> str:
    return "".join(f'<geom class="housing" type="box" size="0.025 0.025 0.365" pos="{x} {y} -0.385"/>'
                   for x in (-0.27, 0.77) for y in (-0.57, 0.57))


def _can(name: str, pos) -> str:
    """Red can body with metal lids; its origin is its centre."""
    half = CAN_HEIGHT / 2 - 0.004
    lids = "".join(f'<geom class="object" type="cylinder" size="{CAN_RADIUS - 0.003} 0.004" pos="0 0 {z:.6g}" '
                   'material="metal" mass="0.01"/>' for z in (half, -half))
    return (f'<body name="{name}" pos="{_v(pos)}"><freejoint name="{name}"/>'
            f'<geom name="{name}" class="object" type="cylinder" size="{CAN_RADIUS} {half:.6g}" material="can" '
            f'mass="0.2"/>{lids}</body>')


def _cup(pos) -> str:
    """Blue cup: a floor and a ring of wall staves; its origin is its centre, its opening along +z."""
    staves, half = 16, CUP_HEIGHT / 2
    ring = CUP_RADIUS - CUP_WALL / 2
    stave = ring * np.tan(np.pi / staves) + 0.001  # half width: neighbours overlap, no gaps
    walls = "".join(
        f'<geom class="object" type="box" material="cup" size="{CUP_WALL / 2:.6g} {stave:.6g} {half:.6g}" '
        f'pos="{_v((ring * np.cos(a), ring * np.sin(a), 0.0))}" euler="0 0 {a:.9g}" mass="0.005"/>'
        for a in np.arange(staves) * 2 * np.pi / staves)
    return (f'<body name="cup" pos="{_v(pos)}"><freejoint name="cup"/>'
            f'<geom class="object" type="cylinder" material="cup" size="{CUP_RADIUS:.6g} 0.003" '
            f'pos="0 0 {-half + 0.003:.6g}" mass="0.02"/>{walls}</body>')


def _target(pos) -> str:
    """A green disc on the table (a mocap body: it goes where a reset puts it and nothing moves it)."""
    return (f'<body name="target" mocap="true" pos="{_v(pos)}">'
            f'<geom class="marker" type="cylinder" size="{TARGET_RADIUS} 0.001" pos="0 0 0.001" rgba="0.1 0.7 0.2 1"/>'
            f'<geom class="marker" type="cylinder" size="{TARGET_RADIUS * 0.45:.6g} 0.0012" pos="0 0 0.0012" '
            f'rgba="0.95 0.95 0.9 1"/></body>')


def _distractor(pos) -> str:
    """A block of another shape and colour than the task objects (its colour is varied per seed)."""
    return (f'<body name="distractor" pos="{_v(pos)}"><freejoint name="distractor"/>'
            f'<geom name="distractor" class="object" type="box" size="{_v(DISTRACTOR_HALF)}" '
            f'rgba="0.9 0.8 0.1 1" mass="0.1"/></body>')


def _box() -> str:
    """White open box: a floor and four walls around a (2 BOX_INNER)^2 opening."""
    outer, half_wall = BOX_INNER + BOX_WALL, BOX_WALL / 2
    z = BOX_HEIGHT / 2
    walls = [
        (0, 0, half_wall, outer, outer, half_wall),
        (BOX_INNER + half_wall, 0, z, half_wall, outer, z),
        (-BOX_INNER - half_wall, 0, z, half_wall, outer, z),
        (0, BOX_INNER + half_wall, z, BOX_INNER, half_wall, z),
        (0, -BOX_INNER - half_wall, z, BOX_INNER, half_wall, z),
    ]
    geoms = "".join(f'<geom class="object" type="box" material="box" pos="{_v(w[:3])}" size="{_v(w[3:])}"/>'
                    for w in walls)
    return f'<body name="box" pos="0.4 0.25 0"><freejoint name="box"/>{geoms}</body>'


def _objects() -> str:
    """Every object at its own spot; resets move them (and park the ones an episode does not use)."""
    return (_can("can", (0.4, -0.2, CAN_HEIGHT / 2)) + _box() + _can("can2", (0.2, 0.4, CAN_HEIGHT / 2))
            + _cup((0.2, -0.4, CUP_HEIGHT / 2)) + _distractor((0.6, 0.4, DISTRACTOR_HALF[2]))
            + _target((0.6, -0.4, 0.0)))


def build_mjcf(image_size: int = 448) -> str:
    """The whole scene as an MJCF string. `image_size` sizes the offscreen buffer (square views)."""
    actuators = "".join(
        f'<position name="{j}" joint="{j}" kp="{kp}" dampratio="1.3" ctrlrange="{_v((lo, hi))}" '
        f'forcerange="{-f} {f}"/>'
        for j, kp, f, lo, hi in zip(JOINT_NAMES, _ARM_KP, _ARM_FORCE, JOINT_LOWER, JOINT_UPPER)
    )
    for side in ("left", "right"):
        actuators += (
            f'<position name="{side}_finger" joint="{side}_finger" kp="{_FINGER_KP}" dampratio="1" '
            f'ctrlrange="0 {FINGER_TRAVEL:.6g}" forcerange="{-_FINGER_FORCE} {_FINGER_FORCE}"/>'
        )
    base_cam = (1.2, -0.4, 0.8)
    return f"""
<mujoco model="xarm6_pick_place_can">
  <compiler angle="radian" eulerseq="XYZ" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{image_size}" offheight="{image_size}"/>
    <quality shadowsize="2048"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.3 0.3 0.3" specular="0.1 0.1 0.1"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.75 0.8 0.9" rgb2="0.3 0.35 0.4"
             width="64" height="64"/>
    <texture name="floor" type="2d" builtin="checker" rgb1="0.35 0.35 0.38" rgb2="0.3 0.3 0.33"
             width="256" height="256"/>
    <material name="floor" texture="floor" texrepeat="8 8"/>
    <material name="wood" rgba="0.7 0.6 0.48 1" specular="0.1"/>
    <material name="arm" rgba="0.92 0.92 0.9 1" specular="0.4" shininess="0.5"/>
    <material name="housing" rgba="0.75 0.76 0.78 1" specular="0.6" shininess="0.7"/>
    <material name="grip" rgba="0.18 0.18 0.2 1"/>
    <material name="can" rgba="0.8 0.05 0.05 1" specular="0.8" shininess="0.9"/>
    <material name="metal" rgba="0.8 0.8 0.82 1" specular="0.9" shininess="0.9"/>
    <material name="box" rgba="0.97 0.97 0.95 1" specular="0.1"/>
    <material name="cup" rgba="0.15 0.35 0.85 1" specular="0.3"/>
    <!-- table tops of the lighting scene (`sim/scenes.py` picks one per seed and tints it) -->
    <material name="table_dark" rgba="0.35 0.27 0.2 1" specular="0.2"/>
    <material name="table_pale" rgba="0.85 0.84 0.8 1" specular="0.05"/>
    <texture name="table_checker" type="2d" builtin="checker" rgb1="0.62 0.6 0.55" rgb2="0.5 0.48 0.44"
             width="128" height="128"/>
    <material name="table_checker" texture="table_checker" texrepeat="6 6"/>
    <texture name="table_speckle" type="2d" builtin="flat" rgb1="0.55 0.5 0.42" mark="random" random="0.2"
             markrgb="0.3 0.28 0.25" width="256" height="256"/>
    <material name="table_speckle" texture="table_speckle" texrepeat="3 3"/>
  </asset>
  <default>
    <joint armature="0.1" damping="1"/>
    <geom solref="0.004 1" friction="1 0.02 0.001"/>
    <!-- contype/conaffinity: arm (2/1) touches the world (1/3) but never itself -->
    <default class="link"><geom material="arm" contype="2" conaffinity="1"/></default>
    <default class="housing"><geom material="housing" contype="0" conaffinity="0"/></default>
    <default class="camera"><geom material="grip" contype="0" conaffinity="0"/></default>
    <default class="grip"><geom material="grip" contype="2" conaffinity="1"/>
      <default class="pad"><geom friction="1.5 0.05 0.001" condim="6" priority="1"/></default>
    </default>
    <default class="object"><geom contype="1" conaffinity="3"/></default>
    <default class="marker"><geom contype="0" conaffinity="0"/></default>
    <default class="finger_joint"><joint armature="0.01" damping="5"/></default>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0.4 0.2 2.5" dir="-0.2 -0.1 -1" diffuse="0.5 0.5 0.5" castshadow="true"/>
    <light name="fill" pos="1.2 -0.8 1.5" dir="-1 0.6 -1" diffuse="0.2 0.2 0.2" castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" material="floor" contype="0" conaffinity="0"/>
    <geom name="table" class="object" type="box" size="0.55 0.6 0.02" pos="0.25 0 -0.02" material="wood"/>
    {_table_legs()}
    <geom name="pedestal" class="housing" type="cylinder" size="0.06 0.065" pos="0 0 0.065"/>
    <camera name="base" pos="{_v(base_cam)}" xyaxes="{_xyaxes(base_cam, (0.22, 0.0, 0.2))}" fovy="52"/>
    {_arm()}
    {_objects()}
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>
"""


def drive_to_finger(drive: float) -> float:
    """Gripper drive_joint (0 open .. 0.85 closed) -> finger slide (0 open .. FINGER_TRAVEL closed)."""
    return float(np.clip(drive, 0.0, GRIPPER_CLOSED)) * FINGER_TRAVEL / GRIPPER_CLOSED


def finger_to_drive(finger: float) -> float:
    return float(finger) * GRIPPER_CLOSED / FINGER_TRAVEL
