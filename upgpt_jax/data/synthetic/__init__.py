"""``synthetic_people``: procedural clothed mannequins posed by SMPL, the dataset the project carries.

A deterministic numpy renderer, no files or downloads needed (see ``generate.py`` for the
identity split and seeding, ``raster.py`` for how the images are drawn)::

    from upgpt_jax.data.synthetic import make_example, make_pair, generate
    example = make_example(0, split="train")      # image, mask, smpl, text, styles, ...
    pair = make_pair(identity_id=3, seed=0)        # same person, two poses
"""

from upgpt_jax.data.synthetic.generate import (
    SPLITS,
    generate,
    identity_from_id,
    identity_split,
    make_example,
    make_pair,
    render_example,
    split_identity_ids,
    uses_colour_free_text,
)
from upgpt_jax.data.synthetic.identity import Identity, describe, describe_colour_free, sample_identity
from upgpt_jax.data.synthetic.mannequin import PARTS
from upgpt_jax.data.synthetic.pose_prior import PosePrior, default_prior, prior_from_frankmocap, sample_pose
from upgpt_jax.data.synthetic.render import WEIGHTED_PARTS, check_part_names, part_weight_map, render

__all__ = [
    "PARTS", "SPLITS", "WEIGHTED_PARTS", "Identity", "PosePrior", "check_part_names", "default_prior", "describe",
    "describe_colour_free", "generate", "identity_from_id", "identity_split", "make_example", "make_pair",
    "part_weight_map", "prior_from_frankmocap", "render",
    "render_example", "sample_identity", "sample_pose", "split_identity_ids", "uses_colour_free_text",
]
