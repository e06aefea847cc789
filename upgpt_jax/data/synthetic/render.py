"""Render an identity in an SMPL pose: mannequin -> weak-perspective projection -> raster.

The 85 SMPL numbers drive everything: the 72 rotations and 10 betas pose the mannequin, the
camera (s, tx, ty) projects it with :func:`upgpt_jax.smpl.kinematics.project_weak_perspective`
(the same map FrankMocap's cameras use), so an image and its SMPL vector always agree.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from upgpt_jax.data.synthetic.identity import Identity
from upgpt_jax.data.synthetic.mannequin import (
    PART_INDEX, PARTS, SKIN_PART, build_body, material_colours, pattern_periods)
from upgpt_jax.data.synthetic.raster import PATTERN_CODES, Raster, ScreenPrimitives, rasterise
from upgpt_jax.smpl.kinematics import default_crop_box, project_weak_perspective
from upgpt_jax.smpl.layout import check_smpl, split_smpl


def screen_primitives(identity: Identity, smpl: np.ndarray, image_size: tuple[int, int]) -> ScreenPrimitives:
    """The mannequin's round cones in pixel units of an ``image_size`` (H, W) image."""
    check_smpl(smpl, "render")
    rotations, betas, camera = split_smpl(np.asarray(smpl, np.float64))
    body = build_body(identity, rotations, betas)
    # Weak perspective scales every axis alike: metres -> pixels is s * side / 2, depth included.
    pixels_per_metre = camera[0] * default_crop_box(image_size)[2] / 2
    project = lambda points: project_weak_perspective(points, camera, image_size)  # noqa: E731
    start, end = project(body.start), project(body.end)
    axis = project(body.frame_towards) - project(body.frame_origin)
    axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-9)
    colour, alt_colour, patterns = material_colours(identity)
    f32 = lambda values: np.asarray(values, np.float32)  # noqa: E731
    return ScreenPrimitives(
        start=f32(start), end=f32(end),
        start_radius=f32(body.start_radius * pixels_per_metre), end_radius=f32(body.end_radius * pixels_per_metre),
        start_depth=f32(body.start[:, 2] * pixels_per_metre), end_depth=f32(body.end[:, 2] * pixels_per_metre),
        colour=colour[body.material], alt_colour=alt_colour[body.material],
        pattern=np.array([PATTERN_CODES[p] for p in patterns])[body.material],
        pattern_origin=f32(project(body.frame_origin)), pattern_axis=f32(axis),
        pattern_period=f32(pattern_periods(patterns) * pixels_per_metre)[body.material],
        part=body.part,
    )


def render_raster(identity: Identity, smpl: np.ndarray, image_size: tuple[int, int] = (64, 48),
                  supersample: int = 1) -> Raster:
    """Colour, coverage and part map at ``supersample`` times ``image_size`` (not yet reduced)."""
    height, width = image_size[0] * supersample, image_size[1] * supersample
    prims = screen_primitives(identity, smpl, (height, width))
    return rasterise(prims, height, width, identity.background)


def downsample(raster: Raster, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-filter a supersampled raster to (uint8 image, bool mask); mask = any coverage in the box."""
    image, alpha = raster.image, raster.alpha
    if supersample > 1:
        height, width = alpha.shape[0] // supersample, alpha.shape[1] // supersample
        image = image.reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3))
        alpha = alpha.reshape(height, supersample, width, supersample).max(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), alpha > 0


def render(identity: Identity, smpl: np.ndarray, image_size: tuple[int, int] = (64, 48),
           supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), mask bool (H, W)) of ``identity`` posed by ``smpl`` (85,).

    Edges and patterns are antialiased analytically; ``supersample`` > 1 renders k times
    larger and box-filters (sharper fine patterns, k^2 the cost). The mask is exactly the
    pixels any part of the person touches: outside it the image is the plain background.
    """
    return downsample(render_raster(identity, smpl, image_size, supersample), supersample)


# The names `part_weight_map` weights: the person's style parts (mannequin.PARTS) and "skin" (arms, legs, neck).
WEIGHTED_PARTS = tuple(part for part in PARTS if part != "background") + ("skin",)


def part_weight_map(identity: Identity, smpl: np.ndarray, weights: Mapping[str, float],
                    image_size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """float32 (H, W, 1) loss weights of ``identity`` posed by ``smpl``: ``weights[part]`` on each pixel
    that part covers by more than half, 1 elsewhere (the background included).

    The original's data loader (config `loss_weight`) builds the same map from a human parser's
    segmentation; the renderer knows its part map exactly (config data.part_loss_weights).
    """
    check_part_names(weights)
    raster = render_raster(identity, smpl, image_size)
    covered = raster.alpha > 0.5
    weight_map = np.ones(raster.alpha.shape, np.float32)
    for part, weight in weights.items():
        label = SKIN_PART if part == "skin" else PART_INDEX[part]
        weight_map[covered & (raster.part == label)] = weight
    return weight_map[..., None]


def check_part_names(weights: Mapping[str, float]) -> None:
    """Refuse weights for names `part_weight_map` does not know (config data.part_loss_weights)."""
    unknown = sorted(set(weights) - set(WEIGHTED_PARTS))
    if unknown:
        raise ValueError(f"data.part_loss_weights: unknown parts {unknown}; expected some of {WEIGHTED_PARTS}")
