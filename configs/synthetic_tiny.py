"""A few-M-parameter UPGPT on 64x48 synthetic people: the default run and the test model.

Same structure as the released model (UNet with spatial transformers, KL-f8 VAE, CLIP
text/vision, concat fusion), tiny widths and a tiny random CLIP, so it trains on a laptop CPU:
  python train.py --config configs/synthetic_tiny.py --workdir /tmp/w
(1000 steps of batch 8 on 512 synthetic pairs rendered in memory: about 7 minutes on 2 CPU cores,
the eps loss falling from about 1.0 to about 0.12.)
"""
import ml_collections

from upgpt_jax.config_base import released_config


def get_config() -> ml_collections.ConfigDict:
    config = released_config()
    model = config.model
    model.image_size = (64, 48)  # -> 8x6 latents.
    model.unet.update(channels=32, channel_mult=(1, 2, 2), attention_levels=(1, 2), num_heads=4,
                      context_dim=64, norm_groups=8)
    model.vae.update(channels=32, channel_mult=(1, 2, 2, 2), norm_groups=8)
    model.clip.update(text_width=64, text_layers=2, text_heads=4, vision_width=64, vision_layers=2,
                      vision_heads=4, image_size=32, patch_size=8, projection_dim=64)
    model.fusion.update(text_dim=64, style_dim=64, context_dim=64, learned_heads=4)
    config.optim.update(learning_rate=2e-4, warmup_steps=100)
    config.train.update(batch_size=8, num_steps=1000, log_every=50, checkpoint_every=250, ema_decay=0.999)
    config.data.num_examples = 512
    return config
