"""Augmentation presets (albumentations) that move point annotations with the image.

Presets (``PRESETS``):

* ``none``         — identity (photometric and geometric);
* ``flips_rot90``  — a uniformly random element of D4 (the 4 quarter turns × optional flip): the augmentation
  that built-in D4 equivariance is supposed to make unnecessary;
* ``rotate_any``   — a random reflection and a uniformly random angle in [-180°, 180°) (O(2));
* ``full``         — ``rotate_any`` + a smooth elastic deformation + H&E stain / colour jitter + blur.

Points are albumentations keypoints, so they move with every geometric step. Masks are *not* warped: the
dataset redraws them from the moved points (``util.ocelot.points_to_mask``), so disks stay round, keep their
radius in µm and sit exactly on their points.

Speed with exact consistency: albumentations' ``ElasticTransform`` moves keypoints by inverting the displacement
field through per-keypoint masks, which costs ≈ 200 ms for 200 points on a 512² image (≈ 7 samples/s for a naive
``full``). Here the geometry of ``rotate_any``/``full`` is one albumentations ``DualTransform``,
:class:`FusedWarp`: flip + rotation + elastic field + centre crop composed into **one** ``cv2.remap`` evaluated on
the output grid only; points go through the same flip and rotation and then solve ``u + o + d(u) = v`` by a few
fixed-point iterations that sample **the same field** bilinearly (the field is smooth, |∇d| ≲ 0.3, so this
converges to < 0.001 px).
Colour: :class:`StainJitter` (optical-density scale/shift per channel via one lookup table, < 1 ms; the
albumentations ``HEStain`` costs ≈ 50 ms at 512²), hue/saturation, brightness/contrast, blur.

Rotations by arbitrary angles need context beyond the crop: :meth:`Augmenter.margin` tells the dataset how many
extra pixels to read around a crop; :class:`FusedWarp` ends with the centre crop back to ``crop_size``. Where the
patch has no more context (a crop as large as the patch) the corners are filled with white (glass, no cells).
"""
from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np

PRESETS: tuple[str, ...] = ("none", "flips_rot90", "rotate_any", "full")
#: Fill value for image pixels that come from outside the patch (white, like glass without tissue).
FILL = (255, 255, 255)


def _bilinear(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample a 2-D array at float pixel positions (clamped to the border)."""
    h, w = field.shape
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros_like(x, dtype=np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros_like(y, dtype=np.int64)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    return ((field[y0, x0] * (1 - fx) + field[y0, x1] * fx) * (1 - fy)
            + (field[y1, x0] * (1 - fx) + field[y1, x1] * fx) * fy)


def invert_displacement(qx: np.ndarray, qy: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                        iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``p + d(p) = q`` for each input position q (fixed-point iteration on the bilinear field d)."""
    px, py = qx.astype(np.float64).copy(), qy.astype(np.float64).copy()
    for _ in range(iterations):
        px = qx - _bilinear(dx, px, py)
        py = qy - _bilinear(dy, px, py)
    return px, py


def _smooth_field(rng: np.random.Generator, h: int, w: int, alpha: float, sigma: float) -> np.ndarray:
    """Two smooth displacement components (2×h×w, float32, std ≈ ``alpha`` px, correlation length ≈ ``sigma``)."""
    step = max(float(sigma), 2.0)
    gh, gw = int(math.ceil(h / step)) + 3, int(math.ceil(w / step)) + 3
    noise = rng.standard_normal((2, gh, gw)).astype(np.float32)
    big = [cv2.resize(n, (int(gw * step), int(gh * step)), interpolation=cv2.INTER_CUBIC) for n in noise]
    o = int(step)
    return np.stack([b[o:o + h, o:o + w] for b in big]) * np.float32(alpha)


class FusedWarp(A.DualTransform):
    """Random reflection + rotation by any angle + optional elastic field + centre crop, in **one** remap.

    The output pixel u (in the ``crop_size`` frame) shows the input at ``F(R⁻¹(u + o + d(u) − c) + c)``: F an
    optional horizontal flip, R a rotation about the window centre c, o the centre-crop offset and d a smooth
    elastic field (:func:`_smooth_field`). Only the output grid is computed (cheap for large context margins)
    and keypoints are moved by the same maths: q → v = R(F(q) − c) + c, then ``u + o + d(u) = v`` solved by
    fixed-point iteration on the same field.
    """

    def __init__(self, crop_size: int | None = None, flip: bool = True, rotate: bool = True,
                 elastic_alpha: float = 0.0, elastic_sigma: float = 64.0, elastic_p: float = 0.8,
                 fill: Any = FILL, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.crop_size = crop_size
        self.flip, self.rotate = flip, rotate
        self.elastic_alpha, self.elastic_sigma, self.elastic_p = elastic_alpha, elastic_sigma, elastic_p
        self.fill = fill

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        oh, ow = (h, w) if self.crop_size is None else (self.crop_size, self.crop_size)
        g = self.random_generator
        flip = bool(self.flip and g.random() < 0.5)
        angle = float(g.uniform(-np.pi, np.pi)) if self.rotate else 0.0
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        ox, oy = (w - ow) / 2.0, (h - oh) / 2.0
        if self.elastic_alpha > 0 and g.random() < self.elastic_p:
            d = _smooth_field(g, oh, ow, self.elastic_alpha, self.elastic_sigma)
        else:
            d = np.zeros((2, oh, ow), np.float32)
        ux, uy = np.meshgrid(np.arange(ow, dtype=np.float32), np.arange(oh, dtype=np.float32))
        vx = ux + np.float32(ox - cx) + d[0]
        vy = uy + np.float32(oy - cy) + d[1]
        ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        # R⁻¹ (v − c) + c, then F
        map_x = ca * vx + sa * vy + np.float32(cx)
        map_y = -sa * vx + ca * vy + np.float32(cy)
        if flip:
            map_x = np.float32(w - 1) - map_x
        return {"map_x": map_x, "map_y": map_y, "dx": d[0], "dy": d[1], "flip": flip, "angle": angle,
                "centre": (cx, cy), "offset": (ox, oy), "in_shape": (h, w)}

    def apply(self, img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any) -> np.ndarray:
        return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=self.fill)

    def apply_to_mask(self, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any) -> np.ndarray:
        return cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        if len(keypoints) == 0:
            return keypoints
        h, w = params["in_shape"]
        cx, cy = params["centre"]
        ox, oy = params["offset"]
        x = keypoints[:, 0].astype(np.float64)
        y = keypoints[:, 1].astype(np.float64)
        if params["flip"]:
            x = (w - 1) - x
        a = params["angle"]
        ca, sa = math.cos(a), math.sin(a)
        vx = ca * (x - cx) - sa * (y - cy) + cx
        vy = sa * (x - cx) + ca * (y - cy) + cy
        ux, uy = invert_displacement(vx - ox, vy - oy, params["dx"], params["dy"])
        out = keypoints.copy()
        out[:, 0], out[:, 1] = ux, uy
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("crop_size", "flip", "rotate", "elastic_alpha", "elastic_sigma", "elastic_p", "fill")


class StainJitter(A.ImageOnlyTransform):
    """H&E stain / intensity jitter in optical density: each RGB channel's OD is scaled and shifted.

    ``I' = 255 · 10^-(s_c · OD_c + b_c)`` with ``OD_c = -log10(I_c / 255)``; a per-channel lookup table, so it
    costs < 1 ms on a 512² image (albumentations' ``HEStain`` costs ≈ 50 ms there).
    """

    def __init__(self, scale: tuple[float, float] = (0.8, 1.2), shift: tuple[float, float] = (-0.05, 0.05),
                 p: float = 0.5) -> None:
        super().__init__(p=p)
        self.scale = tuple(scale)
        self.shift = tuple(shift)

    def get_params(self) -> dict[str, Any]:
        g = self.random_generator
        return {"s": g.uniform(*self.scale, size=3), "b": g.uniform(*self.shift, size=3)}

    def apply(self, img: np.ndarray, s: np.ndarray, b: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise TypeError(f"StainJitter expects a uint8 image, got {img.dtype}")
        od = -np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
        n = img.shape[-1] if img.ndim == 3 else 1
        lut = np.stack([np.clip(256.0 * 10 ** -(s[c % 3] * od + b[c % 3]) - 1.0, 0, 255) for c in range(n)], -1)
        lut = lut.round().astype(np.uint8).reshape(256, 1, n)
        return cv2.LUT(np.ascontiguousarray(img), lut if n > 1 else lut[:, :, 0]).reshape(img.shape)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "shift")


def _photometric() -> list[A.BasicTransform]:
    return [
        StainJitter(p=0.8),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=0.3),
    ]


class Augmenter:
    """A preset as a callable ``(image uint8 H×W×3, points N×3) -> (image, points float N×3)``.

    ``crop_size``: when given, the pipeline ends with a centre crop to that size, and the caller should pass a
    window of ``crop_size + 2 * margin()`` pixels (padded with :data:`FILL` where the patch ends). Points are
    returned as floats in the output frame, including points that left the image (callers drop those).
    """

    def __init__(self, preset: str = "none", crop_size: int | None = None, seed: int | None = None,
                 elastic_alpha: float = 3.0, elastic_sigma: float = 64.0) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {PRESETS}")
        self.preset = preset
        self.crop_size = crop_size
        self.elastic_alpha = elastic_alpha
        steps: list[A.BasicTransform] = []
        if preset == "flips_rot90":
            steps = [A.SquareSymmetry(p=1.0)]
        elif preset in ("rotate_any", "full"):
            steps = [FusedWarp(crop_size=crop_size, flip=True, rotate=True,
                               elastic_alpha=elastic_alpha if preset == "full" else 0.0, elastic_sigma=elastic_sigma,
                               elastic_p=0.8)]
        if preset == "full":
            steps += _photometric()
        self.identity = not steps
        self.compose = A.Compose(steps, keypoint_params=A.KeypointParams(format="xy", label_fields=["labels"],
                                                                         remove_invisible=False),
                                 seed=seed) if steps else None

    def margin(self) -> int:
        """Extra context (px, each side) to read around a ``crop_size`` crop before the transform."""
        if self.crop_size is None or self.preset in ("none", "flips_rot90"):
            return 0
        rot = (math.sqrt(2) - 1) / 2 * self.crop_size
        elastic = 4 * self.elastic_alpha if self.preset == "full" else 0
        return int(math.ceil(rot + elastic)) + 1

    def set_seed(self, seed: int | None) -> None:
        """Reseed the albumentations pipeline (used by the DataLoader's worker_init_fn)."""
        if self.compose is not None:
            self.compose.set_random_seed(seed)

    def __call__(self, image: np.ndarray, points: np.ndarray, mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self.identity:
            return (image, pts) if mask is None else (image, pts, mask)
        kw: dict[str, Any] = {"image": image, "keypoints": pts[:, :2].astype(np.float32),
                              "labels": pts[:, 2].astype(np.int64)}
        if mask is not None:
            kw["mask"] = mask
        out = self.compose(**kw)
        kp = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
        lab = np.asarray(out["labels"], dtype=np.float64).reshape(-1, 1)
        moved = np.concatenate([kp, lab], axis=1)
        return (out["image"], moved) if mask is None else (out["image"], moved, out["mask"])

    def __repr__(self) -> str:
        return f"Augmenter(preset={self.preset!r}, crop_size={self.crop_size})"
