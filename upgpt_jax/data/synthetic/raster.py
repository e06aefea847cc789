"""Antialiased, depth-sorted rasterisation of shaded, patterned round cones in numpy.

A round cone is the union of spheres swept along a segment with linearly varying radius
(a capsule when both radii are equal, a sphere when the segment is empty). Under a
weak-perspective (scaled orthographic) camera its silhouette is *exactly* the 2D round cone
of the projected end points with the projected radii, so the renderer works in the image
plane: an analytic 2D signed distance gives each pixel's coverage (a one-pixel ramp, so edges
are antialiased without supersampling), the sphere bulge gives a per-pixel depth and a
pseudo-normal for shading, and every pixel composites its covering primitives front to
back. Everything is vectorised over the (primitive, pixel) pairs inside each primitive's
bounding box, so the cost follows the drawn area, not primitives x image size.

Patterns (stripes, dots, checks) are antialiased the same way from their own signed
distances, in a per-primitive 2D frame (origin, unit axis, period in pixels), so garments
made of several primitives share one frame and their stripes line up.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SOLID, STRIPES, DOTS, CHECKS = 0, 1, 2, 3
PATTERN_CODES = {"solid": SOLID, "stripes": STRIPES, "dots": DOTS, "checks": CHECKS}
BACKGROUND_PART = -1
# Screen direction towards the light (up and to the left); shading stays within [0.68, 1.05].
_LIGHT = np.array([-0.55, -0.83], np.float32)
# The second colour covers about a third of a patterned garment (stripes 1/3, dots 0.25,
# checks 0.36), so the garment's named colour stays the one most of its pixels show.
_STRIPE_FRACTION = 1 / 3
_CHECK_FRACTION = 0.2
_DOT_RADIUS = 0.28  # of the dot spacing
# Nearest primitives composited per pixel; a pixel's first 4 layers are opaque in practice.
_LAYERS = 4
# Coverage below this is dropped (under a quarter of a grey level), so float32 alpha stays > 0
# wherever anything is drawn and the mask (alpha > 0) is exactly the drawn pixels.
_MIN_COVERAGE = 1.0 / 1024


@dataclasses.dataclass(frozen=True)
class ScreenPrimitives:
    """P round cones in pixel units of the raster they are drawn on (smaller depth = nearer)."""

    start: np.ndarray  # (P, 2) x, y
    end: np.ndarray  # (P, 2)
    start_radius: np.ndarray  # (P,)
    end_radius: np.ndarray  # (P,)
    start_depth: np.ndarray  # (P,)
    end_depth: np.ndarray  # (P,)
    colour: np.ndarray  # (P, 3) float RGB 0..255
    alt_colour: np.ndarray  # (P, 3) the pattern's second colour
    pattern: np.ndarray  # (P,) SOLID / STRIPES / DOTS / CHECKS
    pattern_origin: np.ndarray  # (P, 2)
    pattern_axis: np.ndarray  # (P, 2) unit vector; stripes run across it
    pattern_period: np.ndarray  # (P,) pixels
    part: np.ndarray  # (P,) integer label written to the part map


@dataclasses.dataclass(frozen=True)
class Raster:
    """What :func:`rasterise` draws: colour, person coverage and the frontmost part per pixel."""

    image: np.ndarray  # (H, W, 3) float32 0..255
    alpha: np.ndarray  # (H, W) float32 person coverage in [0, 1]; 0 exactly where nothing was drawn
    part: np.ndarray  # (H, W) int8, BACKGROUND_PART where alpha == 0


def round_cone_distance(px, py, bx, by, length, ra, rb):
    """Signed distance (pixels) from points (px, py), relative to the start, to 2D round cones.

    The cone runs from (0, 0) with radius ``ra`` to (bx, by) with radius ``rb``. If one end
    disc contains the other (a limb pointing at the camera), it is that disc alone.
    """
    safe_length = np.maximum(length, 1e-6)
    along = (px * bx + py * by) / safe_length
    across = np.abs(px * by - py * bx) / safe_length
    sine = (ra - rb) / safe_length
    cosine = np.sqrt(np.maximum(1.0 - sine * sine, 0.0))
    to_start = np.sqrt(px * px + py * py) - ra
    to_end = np.sqrt((px - bx) ** 2 + (py - by) ** 2) - rb
    # Which part of the boundary is nearest: the start cap, the end cap, or the tangent side.
    side_coordinate = cosine * along - sine * across
    distance = np.where(side_coordinate < 0, to_start,
                        np.where(side_coordinate > cosine * length, to_end, cosine * across + sine * along - ra))
    contained = length <= np.abs(ra - rb) + 1e-4
    return np.where(contained, np.where(ra >= rb, to_start, to_end), distance)


def _band(coordinate, period, fraction):
    """Antialiased 0/1 square wave of ``coordinate`` (in periods): 1 on ``fraction`` of each period."""
    signed_pixels = (np.abs(coordinate - np.floor(coordinate) - 0.5) - 0.5 + 0.5 * fraction) * period
    return np.clip(0.5 + signed_pixels, 0.0, 1.0)


def _pattern_weight(kind, u, v, period):
    """Weight of the alternate colour for pattern codes ``kind`` at pattern coordinates (u, v)."""
    stripes = _band(u, period, _STRIPE_FRACTION)
    du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
    dots = np.clip(0.5 - (np.sqrt(du * du + dv * dv) - _DOT_RADIUS) * period, 0.0, 1.0)
    lines_u, lines_v = _band(u, period, _CHECK_FRACTION), _band(v, period, _CHECK_FRACTION)
    checks = lines_u + lines_v - lines_u * lines_v  # a grid of crossing bands
    return np.select([kind == STRIPES, kind == DOTS, kind == CHECKS], [stripes, dots, checks], 0.0)


def _pair_colour(prims: ScreenPrimitives, prim, xs, ys, bulge, normal_x, normal_y):
    """(M, 3) shaded, patterned colour of primitive ``prim[m]`` at pixel centre (xs[m], ys[m])."""
    period = prims.pattern_period[prim]
    dx, dy = xs - prims.pattern_origin[prim, 0], ys - prims.pattern_origin[prim, 1]
    ax, ay = prims.pattern_axis[prim, 0], prims.pattern_axis[prim, 1]
    alt = _pattern_weight(prims.pattern[prim], (dx * ax + dy * ay) / period, (dy * ax - dx * ay) / period,
                          period)[:, None]
    shade = np.clip(0.78 + 0.22 * bulge + 0.1 * (normal_x * _LIGHT[0] + normal_y * _LIGHT[1]), 0.0, 1.05)
    return (prims.colour[prim] * (1 - alt) + prims.alt_colour[prim] * alt) * shade[:, None]


def _candidate_pairs(prims: ScreenPrimitives, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(primitive, pixel) index pairs for every pixel inside each primitive's bounding box."""
    radius = np.maximum(prims.start_radius, prims.end_radius)[:, None]
    low = np.floor(np.minimum(prims.start, prims.end) - radius - 1.0).astype(np.int64)
    high = np.ceil(np.maximum(prims.start, prims.end) + radius + 1.0).astype(np.int64)
    x0, y0 = np.clip(low[:, 0], 0, width), np.clip(low[:, 1], 0, height)
    box_width = np.clip(high[:, 0], 0, width) - x0
    box_height = np.clip(high[:, 1], 0, height) - y0
    counts = np.maximum(box_width, 0) * np.maximum(box_height, 0)
    prim = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(prim.size) - np.repeat(np.cumsum(counts) - counts, counts)
    row, col = np.divmod(offset, np.maximum(box_width, 1)[prim])
    return prim, (y0[prim] + row) * width + x0[prim] + col


def rasterise(prims: ScreenPrimitives, height: int, width: int, background) -> Raster:
    """Draw ``prims`` over a plain ``background`` (RGB) on an (height, width) raster.

    Work is done on (primitive, pixel) pairs inside each primitive's bounding box, then on
    the pairs a primitive actually covers, sorted by pixel and depth; each pixel composites
    its nearest ``_LAYERS`` primitives front to back.
    """
    background = np.asarray(background, np.float32)
    image = np.broadcast_to(background, (height * width, 3)).copy()
    alpha = np.zeros(height * width, np.float32)
    part = np.full(height * width, BACKGROUND_PART, np.int8)
    prim, pixel = _candidate_pairs(prims, height, width)
    xs = (pixel % width).astype(np.float32) + 0.5
    ys = (pixel // width).astype(np.float32) + 0.5
    ax, ay = prims.start[prim, 0], prims.start[prim, 1]
    bx, by = prims.end[prim, 0] - ax, prims.end[prim, 1] - ay
    ra, rb = prims.start_radius[prim], prims.end_radius[prim]
    px, py = xs - ax, ys - ay
    length = np.sqrt(bx * bx + by * by)
    coverage = np.clip(0.5 - round_cone_distance(px, py, bx, by, length, ra, rb), 0.0, 1.0)
    hit = coverage >= _MIN_COVERAGE
    if not hit.any():
        return Raster(image.reshape(height, width, 3), alpha.reshape(height, width), part.reshape(height, width))
    prim, pixel, xs, ys, px, py, bx, by, ra, rb, length, coverage = (
        a[hit] for a in (prim, pixel, xs, ys, px, py, bx, by, ra, rb, length, coverage))

    # Nearest axis point: depth = axis depth minus the sphere's bulge towards the camera.
    t = np.clip((px * bx + py * by) / np.maximum(length * length, 1e-6), 0.0, 1.0)
    radius = np.maximum(ra + (rb - ra) * t, 1e-3)
    normal_x, normal_y = (px - t * bx) / radius, (py - t * by) / radius
    bulge = np.sqrt(np.clip(1.0 - normal_x * normal_x - normal_y * normal_y, 0.0, 1.0))
    start_depth = prims.start_depth[prim]
    depth = start_depth + (prims.end_depth[prim] - start_depth) * t - radius * bulge

    # Sort by pixel, then depth; rank = position within the pixel's list (0 = nearest).
    order = np.lexsort((depth, pixel))
    pixel = pixel[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    starts = np.flatnonzero(first)
    rank = np.arange(pixel.size) - np.repeat(starts, np.diff(np.r_[starts, pixel.size]))
    keep = order[rank < _LAYERS]
    layer, slot = rank[rank < _LAYERS], (np.cumsum(first) - 1)[rank < _LAYERS]
    pixels = pixel[starts]

    layer_coverage = np.zeros((_LAYERS, pixels.size), np.float32)
    layer_coverage[layer, slot] = coverage[keep]
    layer_colour = np.zeros((_LAYERS, pixels.size, 3), np.float32)
    layer_colour[layer, slot] = _pair_colour(prims, prim[keep], xs[keep], ys[keep], bulge[keep],
                                             normal_x[keep], normal_y[keep])
    layer_part = np.zeros((_LAYERS, pixels.size), np.int64)
    layer_part[layer, slot] = prims.part[prim[keep]]
    transmittance = np.cumprod(1.0 - layer_coverage, axis=0)
    weight = layer_coverage * np.concatenate([np.ones_like(transmittance[:1]), transmittance[:-1]])
    image[pixels] = np.sum(weight[..., None] * layer_colour, axis=0) + transmittance[-1][:, None] * background
    alpha[pixels] = 1.0 - transmittance[-1]
    part[pixels] = np.take_along_axis(layer_part, np.argmax(weight, axis=0)[None], axis=0)[0]
    return Raster(image.reshape(height, width, 3), alpha.reshape(height, width), part.reshape(height, width))
