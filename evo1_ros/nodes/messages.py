"""ROS message <-> numpy conversions the nodes share, with the validation ROS itself does not do.

There is no ROS 2 cv_bridge on PyPI, and a malformed message from another process must never
crash a node: every reader here raises `MessageError` with a sentence a user can act on. Image
decoding itself lives in the ROS-free `evo1_ros.data.images`, shared with `evo1-ros convert`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CompressedImage, Image, JointState

from evo1_ros.data import images
from evo1_ros.data.images import COLOR_ENCODINGS


class MessageError(ValueError):
    """A message that cannot be used as it is; the text says why."""


def to_time(seconds: float) -> Time:
    sec = int(seconds // 1)
    return Time(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def to_duration(seconds: float) -> Duration:
    sec = int(seconds // 1)
    return Duration(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def stamp_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def check_color_image(msg: Image | CompressedImage) -> None:
    """Raise MessageError unless `msg` is a usable colour image: an 8-bit 3-channel Image whose step
    and size agree, or a CompressedImage holding JPEG or PNG data (checked by its signature; the
    decoding itself happens where the image is used)."""
    try:
        if images.is_compressed(msg):
            images.compressed_codec(msg)
        else:
            images.check_raw(msg, COLOR_ENCODINGS)
    except images.ImageError as e:
        raise MessageError(str(e)) from e


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """(height, width, 3) uint8 RGB copy of a rgb8/bgr8 Image or a JPEG/PNG CompressedImage."""
    try:
        return images.to_rgb(msg, COLOR_ENCODINGS)
    except images.ImageError as e:
        raise MessageError(str(e)) from e


def array_to_compressed(pixels: np.ndarray, codec: str = "jpeg", stamp: Time | None = None,
                        frame_id: str = "") -> CompressedImage:
    """CompressedImage (image_transport's layout: format "rgb8; <codec> compressed bgr8") of an RGB array."""
    msg = CompressedImage(format=f"rgb8; {codec} compressed bgr8")
    msg.data = images.encode_frame(np.asarray(pixels, np.uint8), codec).tobytes()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def array_to_image(pixels: np.ndarray, encoding: str = "rgb8", stamp: Time | None = None,
                   frame_id: str = "") -> Image:
    """Image message from an (H, W, 3) uint8 array already in `encoding`'s channel order."""
    if encoding not in COLOR_ENCODINGS:
        raise MessageError(f"encoding {encoding!r} is not one of {COLOR_ENCODINGS}")
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise MessageError(f"expected an (H, W, 3) array, got shape {pixels.shape}")
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=0,
                step=3 * pixels.shape[1])
    msg.data = pixels.tobytes()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def joint_positions(msg: JointState, names: Sequence[str]) -> np.ndarray:
    """Positions of `names`, in that order, from a JointState that may list joints in any order."""
    if len(msg.position) != len(msg.name):
        raise MessageError(f"JointState has {len(msg.name)} names but {len(msg.position)} positions")
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [name for name in names if name not in index]
    if missing:
        raise MessageError(f"JointState lacks {missing} (has {list(msg.name)})")
    q = np.array([msg.position[index[name]] for name in names], dtype=float)
    if not np.isfinite(q).all():
        raise MessageError(f"JointState has non-finite positions {dict(zip(names, q))}")
    return q
