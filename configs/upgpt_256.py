"""The released UPGPT pose-transfer model: 256x192 images, 32x24x4 latents, 425.3 M-param UNet.

Import released weights, then sample:
  python -m upgpt_jax.convert --format ldm --checkpoint upgpt.ckpt \
      --config configs/upgpt_256.py --out weights/upgpt_256
"""
import ml_collections

from upgpt_jax.config_base import released_config


def get_config() -> ml_collections.ConfigDict:
    return released_config()
