"""Dataset frames on disk: RGB images encoded as PNG or JPEG bytes (OpenCV), and back.

The converter writes them, the torch dataset and the LeRobot export read them.
"""

from __future__ import annotations

import numpy as np


def encode_frame(rgb: np.ndarray, codec: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the encoded bytes as a flat uint8 array; codec "png" or "jpg"."""
    import cv2

    ok, buf = cv2.imencode(f".{codec}", np.ascontiguousarray(rgb[..., ::-1]))  # cv2 wants BGR
    assert ok, codec
    return buf.ravel()


def decode_frame(buf: np.ndarray) -> np.ndarray:
    """Encoded bytes (a flat uint8 array) -> (H, W, 3) uint8 RGB."""
    import cv2

    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
