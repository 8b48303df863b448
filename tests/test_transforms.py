"""util.transforms: points and masks stay aligned with the image under every preset; D4 coverage."""
from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import pytest

from util.ocelot import points_to_mask
from util.transforms import FILL, PRESETS, Augmenter, StainJitter, _smooth_field, invert_displacement

CROP = 96
MPP, RADIUS_UM = 0.5, 3.0  # 6 px disks
#: The 8 elements of D4 as functions on H×W(×C) arrays (identity, rot90 ×3, flips).
D4_ELEMENTS: dict[str, Any] = {
    "e": lambda a: a,
    "r90": lambda a: np.rot90(a, 1),
    "r180": lambda a: np.rot90(a, 2),
    "r270": lambda a: np.rot90(a, 3),
    "fx": lambda a: a[:, ::-1],
    "fy": lambda a: a[::-1],
    "t": lambda a: np.swapaxes(a, 0, 1),
    "at": lambda a: np.rot90(a, 2).swapaxes(0, 1),
}


class FastElastic(A.ElasticTransform):
    """Smooth elastic deformation whose keypoints move with the same field as the image (fast and exact).

    ``alpha``: displacement standard deviation in pixels; ``sigma``: correlation length in pixels (the field of
    :func:`util.transforms._smooth_field`, the one ``FusedWarp`` uses). Output pixel p shows input pixel
    ``p + d(p)``; an input point q goes to the p with ``p + d(p) = q``.
    """

    def __init__(self, alpha: float = 3.0, sigma: float = 64.0, p: float = 1.0, fill: Any = FILL,
                 border_mode: int = cv2.BORDER_CONSTANT) -> None:
        super().__init__(alpha=1.0, sigma=50.0, p=p, border_mode=border_mode, fill=fill, fill_mask=0,
                         keypoint_remapping_method="direct")
        self.fast_alpha = float(alpha)
        self.fast_sigma = float(sigma)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        dx, dy = _smooth_field(self.random_generator, h, w, self.fast_alpha, self.fast_sigma)
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        return {"map_x": gx + dx, "map_y": gy + dy, "dx": np.ascontiguousarray(dx), "dy": np.ascontiguousarray(dy)}

    def apply_to_keypoints(self, keypoints: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                           **params: Any) -> np.ndarray:
        if len(keypoints) == 0:
            return keypoints
        px, py = invert_displacement(keypoints[:, 0], keypoints[:, 1], params["dx"], params["dy"])
        out = keypoints.copy()
        out[:, 0], out[:, 1] = px, py
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("fast_alpha", "fast_sigma")


@pytest.mark.parametrize("preset", PRESETS)
def test_point_mask_and_image_stay_aligned(preset: str) -> None:
    """≥ 50 random draws: the moved point sits on (1) the warped disk it generated and (2) the warped image marker."""
    aug = Augmenter(preset, crop_size=CROP, seed=123)
    w = CROP + 2 * aug.margin()
    rng = np.random.default_rng(7)
    worst_mask = worst_img = 0.0
    n_checked = 0
    for _ in range(60):
        x, y = (w / 2 + rng.uniform(-CROP / 3, CROP / 3, size=2)).round()
        pts = np.array([[x, y, 2]])
        mask = points_to_mask(pts, (w, w), RADIUS_UM, MPP).astype(np.uint8)
        image = np.full((w, w, 3), 255, np.uint8)
        image[mask > 0] = 0  # a dark disk marker on white
        out_img, moved, out_mask = aug(image, pts, mask)
        assert out_img.shape == (CROP, CROP, 3) and out_mask.shape == (CROP, CROP)
        assert moved.shape == (1, 3) and moved[0, 2] == 2
        px, py = moved[0, :2]
        if not (8 <= px < CROP - 8 and 8 <= py < CROP - 8):
            continue  # the disk left the crop (possible after rotation): nothing to compare
        ys, xs = np.nonzero(out_mask)
        worst_mask = max(worst_mask, float(np.hypot(xs.mean() - px, ys.mean() - py)))
        dark = out_img.astype(float).mean(-1) < 128
        ys, xs = np.nonzero(dark)
        worst_img = max(worst_img, float(np.hypot(xs.mean() - px, ys.mean() - py)))
        # the mask redrawn from the moved point (what the dataset does) covers the same place
        redrawn = points_to_mask(np.rint(moved).astype(int), (CROP, CROP), RADIUS_UM, MPP)
        overlap = ((redrawn > 0) & (out_mask > 0)).sum() / max((redrawn > 0).sum(), 1)
        assert overlap > 0.7  # rounding the point to integer pixels costs up to 0.7 px on a 6 px disk
        n_checked += 1
    assert n_checked >= 50
    assert worst_mask <= 1.0, f"{preset}: mask disk {worst_mask:.2f} px from its point"
    assert worst_img <= 1.0, f"{preset}: image marker {worst_img:.2f} px from its point"


def test_flips_rot90_produces_all_8_d4_elements() -> None:
    aug = Augmenter("flips_rot90", crop_size=None, seed=0)
    img = np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3)
    pts = np.array([[2, 5, 1]])
    seen = set()
    for _ in range(200):
        out, moved = aug(img, pts)
        names = [n for n, f in D4_ELEMENTS.items() if np.array_equal(out, f(img))]
        assert len(names) == 1
        seen.add(names[0])
        # the point moved like the image: its pixel value is still under it
        x, y = np.rint(moved[0, :2]).astype(int)
        assert np.array_equal(out[y, x], img[5, 2])
    assert seen == set(D4_ELEMENTS)


def test_fast_elastic_inverse_is_exact() -> None:
    t = FastElastic(alpha=3.0, sigma=64.0)
    t.set_random_seed(5)
    prm = t.get_params_dependent_on_data({"shape": (300, 280)}, {})
    q = np.random.default_rng(0).uniform(20, 260, size=(200, 2))
    px, py = invert_displacement(q[:, 0], q[:, 1], prm["dx"], prm["dy"])
    from util.transforms import _bilinear

    np.testing.assert_allclose(px + _bilinear(prm["dx"], px, py), q[:, 0], atol=1e-3)
    np.testing.assert_allclose(py + _bilinear(prm["dy"], px, py), q[:, 1], atol=1e-3)
    assert np.abs(prm["dx"]).max() > 1.0  # the field really moves things


def test_stain_jitter_changes_colour_not_geometry() -> None:
    t = StainJitter(p=1.0)
    t.set_random_seed(1)
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = t.apply(img, **t.get_params())
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    # monotone per channel: the order of intensities is kept
    for c in range(3):
        order = np.argsort(img[..., c].ravel(), kind="stable")
        assert np.all(np.diff(out[..., c].ravel()[order].astype(int)) >= 0)


def test_seeded_augmenter_is_reproducible_and_bad_preset_is_named() -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pts = np.array([[10, 20, 1], [40, 30, 2]])
    a = Augmenter("full", crop_size=32, seed=9)
    b = Augmenter("full", crop_size=32, seed=9)
    for _ in range(3):
        (ia, pa), (ib, pb) = a(img, pts), b(img, pts)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(pa, pb)
    with pytest.raises(ValueError, match="unknown augmentation preset 'rot45'"):
        Augmenter("rot45")
