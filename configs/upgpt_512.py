"""UPGPT at 512x384 (64x48x4 latents), the original's high-resolution layout.

  python -m upgpt_jax.convert --format ldm --checkpoint upgpt_512.ckpt \
      --config configs/upgpt_512.py --out weights/upgpt_512

Set for the released weights as configs/upgpt_256.py is (config_base.released_weights): masks
-1 outside and -0.99216 inside, absent style parts as CLIP of the black crop, for sampling and
fine-tuning from them.
"""
import ml_collections

from upgpt_jax.config_base import released_config, released_weights


def get_config() -> ml_collections.ConfigDict:
    config = released_weights(released_config())
    config.model.image_size = (512, 384)
    return config
