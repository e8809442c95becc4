"""Training-time image augmentation of the Evo-1 recipe, in plain torch so it runs batched on the training
device: with probability p per image, a random resized crop (area 0.95-1), a rotation (±5°) and a
colour jitter (brightness 0.3, contrast 0.4, saturation 0.5, hue 0.08). Optionally also a random
shift of up to a given fraction of the image side (edges repeated, as DrQ's pad-and-crop): camera
poses vary between setups (the sim's `camera` scene moves them by up to 2 cm and 3 degrees), and
the reference crop moves the view by 2.5 % at most.

Every random number comes from `generator` (default: torch's global CPU generator), so a seeded
run, and a resumed one, draws the same augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CROP_SCALE = (0.95, 1.0)
MAX_ROTATION_DEG = 5.0
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.3, 0.4, 0.5, 0.08
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as torchvision's rgb_to_grayscale

# RGB <-> YIQ. A hue shift is a rotation of the (I, Q) chroma plane: close to an HSV hue shift
# and needs no branchy HSV conversion.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _uniform(n: int, lo: float, hi: float, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def crop_and_rotate(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Float images (N, 3, h, w) -> the same size, each showing a random square-ish crop of area
    CROP_SCALE (aspect kept) rotated by up to ±MAX_ROTATION_DEG, in one bilinear resampling."""
    n, _, h, w = x.shape
    side = _uniform(n, *CROP_SCALE, generator).sqrt()  # crop side as a fraction of the image
    angle = _uniform(n, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, generator) * (math.pi / 180)
    # Crop centre anywhere the crop still fits, in normalised [-1, 1] coordinates.
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - side).unsqueeze(1)
    # affine_grid maps output to input coordinates, both normalised per axis; rotating in pixel
    # space therefore needs the aspect ratio: n_in = D^-1 R D (side * n_out) + shift, D = (w, h).
    cos, sin, aspect = angle.cos(), angle.sin(), w / h
    theta = torch.stack([
        torch.stack([cos * side, -sin * side / aspect, shift[:, 0]], 1),
        torch.stack([sin * side * aspect, cos * side, shift[:, 1]], 1),
    ], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_shift(x: torch.Tensor, fraction: float, generator=None) -> torch.Tensor:
    """Float images (N, 3, h, w) moved by up to `fraction` of their size along each axis, drawn per
    image; what comes in at the border repeats the edge pixels."""
    n = x.shape[0]
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * fraction)  # normalised coords span 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = offset
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Float images (N, 3, h, w) in [0, 1]: brightness, contrast, saturation, hue, each factor
    drawn per image; clamped to [0, 1] after every step as torchvision does."""
    n = x.shape[0]
    b = _uniform(n, 1 - BRIGHTNESS, 1 + BRIGHTNESS, generator).to(x).view(n, 1, 1, 1)
    c = _uniform(n, 1 - CONTRAST, 1 + CONTRAST, generator).to(x).view(n, 1, 1, 1)
    s = _uniform(n, 1 - SATURATION, 1 + SATURATION, generator).to(x).view(n, 1, 1, 1)
    hue = _uniform(n, -HUE, HUE, generator).to(x) * (2 * math.pi)
    luma = torch.tensor(LUMA).to(x).view(1, 3, 1, 1)

    x = (x * b).clamp(0, 1)
    mean_grey = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean_grey) * c + mean_grey).clamp(0, 1)
    grey = (x * luma).sum(1, keepdim=True)
    x = ((x - grey) * s + grey).clamp(0, 1)
    cos, sin, one, zero = hue.cos(), hue.sin(), torch.ones_like(hue), torch.zeros_like(hue)
    rotate = torch.stack([
        torch.stack([one, zero, zero], 1),
        torch.stack([zero, cos, -sin], 1),
        torch.stack([zero, sin, cos], 1),
    ], 1)  # (N, 3, 3): Y kept, (I, Q) rotated
    mix = _YIQ_TO_RGB.to(x) @ rotate @ _RGB_TO_YIQ.to(x)
    return torch.einsum("nij,njhw->nihw", mix, x).clamp(0, 1)


def augment(images: torch.Tensor, p: float = 0.5, generator=None, shift: float = 0.0) -> torch.Tensor:
    """uint8 images (..., 3, h, w) -> augmented uint8 images of the same shape. Each image is
    augmented (crop + rotation + jitter, and a shift of up to `shift` of its side when that is
    above 0) with probability p, else returned untouched."""
    flat = images.reshape(-1, *images.shape[-3:])
    chosen = (torch.rand(flat.shape[0], generator=generator) < p).to(flat.device)
    out = flat.clone()
    if bool(chosen.any()):
        x = flat[chosen].float() / 255
        x = crop_and_rotate(x, generator)
        if shift > 0:
            x = random_shift(x, shift, generator)
        x = color_jitter(x, generator)
        out[chosen] = (x * 255).round().to(images.dtype)
    return out.reshape(images.shape)
