"""UPGPT at 512x384 (64x48x4 latents), the original's high-resolution layout.

  python -m upgpt_jax.convert --format ldm --checkpoint upgpt_512.ckpt \
      --config configs/upgpt_512.py --out weights/upgpt_512
"""
import ml_collections

from upgpt_jax.config_base import released_config


def get_config() -> ml_collections.ConfigDict:
    config = released_config()
    config.model.image_size = (512, 384)
    return config
