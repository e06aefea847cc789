"""The clothed mannequin: round cones hung on the posed SMPL skeleton, in metres.

Each body part is a round cone (see :mod:`raster`) between two points that move with the
skeleton: joints from :func:`upgpt_jax.smpl.kinematics.forward_kinematics`, or offsets
expressed in a joint's rest frame and turned by its global rotation (the head, hair, shoes).
Clothing decides each cone's material: a short sleeve covers the upper half of the upper arm
with the top's material and leaves the rest skin, trousers cover thigh and shin, a skirt is
one wide cone from the pelvis to the knees. Garment cones are a little thicker than the skin
under them so they win the per-pixel depth test where both overlap.

Coordinates are SMPL's posed frame (the global orientation includes FrankMocap's half turn,
so y points down the image and a smaller z is nearer the camera).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from upgpt_jax.data.synthetic.identity import CLOTHING_COLOURS, HAIR_COLOURS, Identity
from upgpt_jax.smpl.kinematics import forward_kinematics, rest_joints
from upgpt_jax.smpl.layout import JOINT_INDEX, NUM_JOINTS

# The 9 style parts of UPGPT, in the order of its style encoder.
PARTS = ("face", "hair", "headwear", "background", "top", "outer", "bottom", "shoes", "accessories")
PART_INDEX = {name: index for index, name in enumerate(PARTS)}
SKIN_PART = len(PARTS)  # arms, legs and neck: drawn (in the mask) but no style part of their own

SKIN, EYES, HAIR, TOP, BOTTOM, SHOES = range(6)
_EYE_COLOUR = (46, 34, 34)
# Garment-pattern period in metres (at 64x48 a body is ~32 px/m, so stripes are ~4 px apart).
_PATTERN_PERIOD = {"solid": 1.0, "stripes": 0.13, "dots": 0.11, "checks": 0.14}
_SLEEVE_COVER = {"sleeveless": 0.0, "short": 0.55, "long": 2.0}  # in upper-arm/forearm segments
_LEG_COVER = {"shorts": 0.5, "skirt": 0.0, "trousers": 2.0}  # in thigh/shin segments
_GARMENT_MARGIN = 0.008  # metres a garment stands off the skin


@dataclasses.dataclass(frozen=True)
class BodyShape:
    """Radii (metres) that differ between the two figures."""

    chest: float
    waist: float
    hips: float
    shoulder: float
    thigh: float


SHAPES = {
    "woman": BodyShape(chest=0.112, waist=0.098, hips=0.092, shoulder=0.048, thigh=0.078),
    "man": BodyShape(chest=0.128, waist=0.112, hips=0.086, shoulder=0.056, thigh=0.074),
}


@dataclasses.dataclass(frozen=True)
class Body:
    """P round cones in the posed frame, with their material, part label and pattern frame."""

    start: np.ndarray  # (P, 3)
    end: np.ndarray  # (P, 3)
    start_radius: np.ndarray  # (P,)
    end_radius: np.ndarray  # (P,)
    material: np.ndarray  # (P,) SKIN / EYES / HAIR / TOP / BOTTOM / SHOES
    part: np.ndarray  # (P,) index into PARTS, or SKIN_PART
    frame_origin: np.ndarray  # (P, 3) where the garment pattern starts
    frame_towards: np.ndarray  # (P, 3) a point along the pattern's axis


def material_colours(identity: Identity) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per material: base colour (6, 3), the pattern's second colour (6, 3), pattern name."""
    top, bottom = CLOTHING_COLOURS[identity.top_colour], CLOTHING_COLOURS[identity.bottom_colour]
    colour = np.array([identity.skin, _EYE_COLOUR, HAIR_COLOURS[identity.hair_colour], top, bottom,
                       CLOTHING_COLOURS[identity.shoes_colour]], np.float32)
    # The second colour moves 35% towards white (dark colours) or black (light ones): the
    # garment keeps its named hue, and the pattern still shows.
    luminance = colour @ np.array([0.299, 0.587, 0.114], np.float32)
    target = np.where(luminance[:, None] < 150, 255.0, 0.0)
    alt = colour + 0.35 * (target - colour)
    patterns = ["solid", "solid", "solid", identity.top_pattern, identity.bottom_pattern, "solid"]
    return colour, alt.astype(np.float32), patterns


def pattern_periods(patterns: list[str]) -> np.ndarray:
    """Pattern period in metres per material."""
    return np.array([_PATTERN_PERIOD[name] for name in patterns], np.float32)


class _Builder:
    """Collects round cones; keeps the body layout below readable."""

    def __init__(self, joints: np.ndarray, rotations: np.ndarray):
        self.joints, self.rotations, self.rows = joints, rotations, []

    def joint(self, name: str) -> np.ndarray:
        return self.joints[JOINT_INDEX[name]]

    def at(self, name: str, offset) -> np.ndarray:
        """A point at ``offset`` (metres, in the joint's rest frame) from joint ``name``."""
        index = JOINT_INDEX[name]
        return self.joints[index] + self.rotations[index] @ np.asarray(offset, np.float64)

    def add(self, start, end, start_radius, end_radius, material, part, frame=None):
        origin, towards = frame if frame is not None else (start, end)
        self.rows.append((start, end, start_radius, end_radius, material, part, origin, towards))

    def chain(self, points, radii, cover: float, garment: int, part: int):
        """Skin segments through ``points``; the first ``cover`` segments (may be fractional) in ``garment``."""
        for index in range(len(points) - 1):
            start, end = points[index], points[index + 1]
            r0, r1 = radii[index], radii[index + 1]
            covered = float(np.clip(cover - index, 0.0, 1.0))
            hem, hem_radius = start + covered * (end - start), r0 + covered * (r1 - r0)
            if covered > 0:
                self.add(start, hem, r0 + _GARMENT_MARGIN, hem_radius + _GARMENT_MARGIN, garment, part)
            if covered < 1:
                self.add(hem, end, hem_radius, r1, SKIN, SKIN_PART)

    def build(self) -> Body:
        columns = list(zip(*self.rows, strict=True))
        as_array = lambda values, dtype=np.float64: np.array(values, dtype)  # noqa: E731
        return Body(as_array(columns[0]), as_array(columns[1]), as_array(columns[2]), as_array(columns[3]),
                    as_array(columns[4], np.int32), as_array(columns[5], np.int32), as_array(columns[6]),
                    as_array(columns[7]))


def pose_skeleton(rotations: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posed joints (24, 3) and global rotations (24, 3, 3) in float64."""
    rotations = np.asarray(rotations, np.float64).reshape(NUM_JOINTS, 3)
    return forward_kinematics(rotations, rest_joints(np.asarray(betas, np.float64)))


def build_body(identity: Identity, rotations: np.ndarray, betas: np.ndarray) -> Body:
    """The clothed mannequin of ``identity`` in the pose (24 axis-angle rotations, betas)."""
    joints, global_rotations = pose_skeleton(rotations, betas)
    shape = SHAPES[identity.figure]
    body = _Builder(joints, global_rotations)
    face, hair, top, bottom, shoes = (PART_INDEX[p] for p in ("face", "hair", "top", "bottom", "shoes"))

    # Head, eyes and hair: offsets in the head's rest frame (y up, z forward). Seen from
    # behind (the face turned more than 60 degrees away), the head's skin is no face crop.
    facing_away = global_rotations[JOINT_INDEX["head"]][2, 2] > 0.5  # forward axis' depth; +z is away
    face = SKIN_PART if facing_away else face
    body.add(body.at("head", (0, 0.03, 0.012)), body.at("head", (0, 0.105, 0.0)), 0.074, 0.092, SKIN, face)
    for side in (-1, 1):
        eye = body.at("head", (0.032 * side, 0.09, 0.083))
        body.add(eye, eye, 0.011, 0.011, EYES, face)
    crown = body.at("head", (0, 0.125, -0.026))
    body.add(crown, crown, 0.099, 0.099, HAIR, hair)
    if identity.hair_length == "long":
        body.add(body.at("head", (0, 0.09, -0.04)), body.at("head", (0, -0.14, -0.07)), 0.092, 0.1, HAIR, hair)
    body.add(body.joint("neck"), body.at("head", (0, 0.03, 0)), 0.05, 0.045, SKIN, SKIN_PART)

    # Torso: the top's pattern runs down the spine, so all torso cones share one frame.
    torso_frame = (body.joint("neck"), body.joint("pelvis"))
    body.add(body.joint("spine3"), body.at("neck", (0, -0.04, 0)), shape.chest, 0.85 * shape.chest, TOP, top,
             torso_frame)
    body.add(body.joint("spine1"), body.joint("spine2"), shape.waist, 0.5 * (shape.waist + shape.chest), TOP, top,
             torso_frame)
    for side in ("left", "right"):
        body.add(body.joint(f"{side}_collar"), body.joint(f"{side}_shoulder"), shape.shoulder + _GARMENT_MARGIN,
                 shape.shoulder + _GARMENT_MARGIN, TOP, top, torso_frame)

    knees_middle = 0.5 * (body.joint("left_knee") + body.joint("right_knee"))
    hips_frame = (body.joint("pelvis"), knees_middle)
    hips_middle = 0.5 * (body.joint("left_hip") + body.joint("right_hip"))
    body.add(body.joint("pelvis"), hips_middle, shape.waist + 0.004, shape.hips, BOTTOM, bottom, hips_frame)
    body.add(body.joint("left_hip"), body.joint("right_hip"), shape.hips, shape.hips, BOTTOM, bottom, hips_frame)
    if identity.bottom == "skirt":
        hem = body.joint("pelvis") + 0.85 * (knees_middle - body.joint("pelvis"))
        spread = 0.5 * np.linalg.norm(body.joint("left_knee") - body.joint("right_knee"))
        body.add(body.joint("pelvis"), hem, shape.hips + 0.02, spread + 0.07, BOTTOM, bottom, hips_frame)

    for side in ("left", "right"):
        arm = [body.joint(f"{side}_{name}") for name in ("shoulder", "elbow", "wrist")]
        body.chain(arm, (0.047, 0.037, 0.03), _SLEEVE_COVER[identity.sleeves], TOP, top)
        wrist, hand = body.joint(f"{side}_wrist"), body.joint(f"{side}_hand")
        body.add(wrist, hand + 0.4 * (hand - wrist), 0.029, 0.026, SKIN, SKIN_PART)
        leg = [body.joint(f"{side}_{name}") for name in ("hip", "knee", "ankle")]
        body.chain(leg, (shape.thigh, 0.053, 0.04), _LEG_COVER[identity.bottom], BOTTOM, bottom)
        body.add(body.at(f"{side}_ankle", (0, -0.035, -0.025)), body.at(f"{side}_foot", (0, -0.01, 0.035)),
                 0.044, 0.034, SHOES, shoes)
    return body.build()
