"""Camera images to RGB arrays and back: the one place images are decoded.

Readers take any object with a ROS image message's fields, so the same code serves rclpy messages
(the nodes) and rosbags' deserialized ones (`evo1-ros convert`):

- `sensor_msgs/Image`: `encoding`, `height`, `width`, `step` (bytes per row, rows may be
  padded), `data`;
- `sensor_msgs/CompressedImage` (image_transport's `<topic>/compressed`): `format` (e.g. "jpeg",
  "png", or image_transport's "rgb8; jpeg compressed bgr8"), `data`; decoded with OpenCV.

A malformed image raises `ImageError` with a sentence a user can act on. Dataset frames are stored
PNG/JPEG-encoded (`encode_frame` / `decode_frame`).
"""

from __future__ import annotations

import numpy as np

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}  # raw encodings read
COLOR_ENCODINGS = ("rgb8", "bgr8")  # what the camera and sim nodes publish and the policy takes
COMPRESSED_CODECS = ("jpeg", "png")
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


class ImageError(ValueError):
    """An image that cannot be decoded as it is; the text says why."""


def is_compressed(msg) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def check_raw(msg, encodings=tuple(CHANNELS)) -> None:
    """Raise ImageError unless `msg` is an image in one of `encodings` whose step and size agree."""
    if msg.encoding not in encodings:
        raise ImageError(f"encoding {msg.encoding!r} is not one of {tuple(encodings)}")
    if msg.width == 0 or msg.height == 0:
        raise ImageError(f"empty image {msg.width}x{msg.height}")
    row = CHANNELS[msg.encoding] * msg.width
    if msg.step < row:  # rows may be padded, never short
        raise ImageError(f"step {msg.step} is less than {CHANNELS[msg.encoding]} * width = {row}")
    if len(msg.data) != msg.step * msg.height:
        raise ImageError(f"data has {len(msg.data)} bytes, step * height = {msg.step * msg.height}")


def raw_to_rgb(msg, encodings=tuple(CHANNELS)) -> np.ndarray:
    """(height, width, 3) uint8 RGB copy of a raw image (mono8 repeated, alpha dropped)."""
    check_raw(msg, encodings)
    c = CHANNELS[msg.encoding]
    rows = np.frombuffer(bytes(msg.data) if isinstance(msg.data, list) else msg.data, dtype=np.uint8)
    pixels = rows.reshape(msg.height, msg.step)[:, : c * msg.width].reshape(msg.height, msg.width, c)
    if c == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.array(pixels[..., 2::-1] if msg.encoding.startswith("bgr") else pixels[..., :3], order="C")


def compressed_codec(msg) -> str:
    """The codec of a CompressedImage ('jpeg' | 'png'), checked against the data's signature;
    ImageError if it is neither or the data does not start like one."""
    declared = str(msg.format).lower()
    named = [c for c in COMPRESSED_CODECS if c in declared or (c == "jpeg" and "jpg" in declared)]
    data = bytes(msg.data[:8])
    found = [c for c, magic in _MAGIC.items() if data.startswith(magic)]
    if not found:
        raise ImageError(f"compressed data ({len(msg.data)} bytes, format {msg.format!r}) is neither JPEG nor PNG")
    if named and named[-1] != found[0]:
        raise ImageError(f"format says {msg.format!r} but the data is {found[0].upper()}")
    return found[0]


def compressed_to_rgb(msg) -> np.ndarray:
    """(height, width, 3) uint8 RGB of a JPEG or PNG CompressedImage."""
    compressed_codec(msg)
    import cv2

    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"compressed image ({len(buf)} bytes, format {msg.format!r}) does not decode")
    return np.ascontiguousarray(bgr[..., ::-1])


def to_rgb(msg, encodings=tuple(CHANNELS)) -> np.ndarray:
    """Any camera image message (raw or compressed) -> (height, width, 3) uint8 RGB."""
    return compressed_to_rgb(msg) if is_compressed(msg) else raw_to_rgb(msg, encodings)


def encode_frame(rgb: np.ndarray, codec: str) -> np.ndarray:
    """An RGB frame as PNG ('png') or JPEG ('jpg'/'jpeg') bytes (uint8 array)."""
    import cv2

    ok, buf = cv2.imencode(f".{codec}", np.ascontiguousarray(rgb[..., ::-1]))  # cv2 wants BGR
    if not ok:
        raise ImageError(f"cannot encode a {rgb.shape} frame as {codec}")
    return buf.ravel()


def decode_frame(buf: np.ndarray) -> np.ndarray:
    """RGB frame of PNG/JPEG bytes."""
    import cv2

    bgr = cv2.imdecode(np.asarray(buf, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{len(buf)} bytes do not decode as an image")
    return np.ascontiguousarray(bgr[..., ::-1])
