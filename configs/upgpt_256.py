"""The released UPGPT pose-transfer model: 256x192 images, 32x24x4 latents, 425.3 M-param UNet.

Import released weights, then sample:
  python -m upgpt_jax.convert --format ldm --checkpoint upgpt.ckpt \
      --config configs/upgpt_256.py --out weights/upgpt_256

Set for the released weights (config_base.released_weights), for sampling and for fine-tuning
from them: person masks are -1 outside and -0.99216 inside (`data.original_mask_quirk`), as the
original's data always gave them, and an absent style part is CLIP of the normalised black crop
(`model.fusion.missing_style="black_crop"`). A model trained from scratch here should use the
defaults instead (`--config.data.original_mask_quirk=False --config.model.fusion.missing_style=null`).
"""
import ml_collections

from upgpt_jax.config_base import released_config, released_weights


def get_config() -> ml_collections.ConfigDict:
    return released_weights(released_config())
