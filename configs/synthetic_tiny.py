"""A few-M-parameter UPGPT on 64x48 synthetic people: the default run and the test model.

Same structure as the released model (UNet with spatial transformers, KL-f8 VAE, CLIP
text/vision, concat fusion) and tiny widths, so it trains on a laptop CPU (the README's main job
runs these three, then samples):
  python -m upgpt_jax.train.clip_pretrain --config configs/synthetic_tiny.py --out /tmp/w/clip
  python train.py --config configs/synthetic_tiny.py:vae --workdir /tmp/w/vae
  python train.py --config configs/synthetic_tiny.py --workdir /tmp/w/diffusion --config.train.init_vae_from=/tmp/w/vae \
      --config.model.clip.path=/tmp/w/clip
The first trains the tiny CLIP contrastively on the synthetic (crop, part text) and (image, text)
pairs (`clip_pretrain`, ~1 min), in place of the pretrained CLIP the released model stands on:
with it the main job's colour accuracy rose from 0.26 to 0.43 and edits began to work (README,
"What the tiny runs learn"). Without `model.clip.path` the CLIP is random (the tests' model).
The VAE downsamples by 4, not SD's 8: at 64x48 an f=8 latent (8x6) keeps the silhouette but loses
the garments' colours in the few minutes the main job trains it (L1 0.10 after 600 steps vs 0.075
at f=4, 16x12x4), and the diffusion model learns the f=4 latents much faster (loss 0.12 vs 0.45
at step 250). `scale_by_std` measures the latent scale of that VAE (LDM's option): SD's 0.18215
would leave its latents at std ~0.6, noisier at every timestep than the schedule intends.
The VAE stage weights its L1 toward the person and a one-latent-pixel rim
(`train.vae.person_weight` 12): its 600-step reconstructions then named the right garment colour
for 58-74% of parts instead of 35%. It now trains 1,000 steps over 1,200 people, each rendered
once and then memoised, not 600 over 5,000 that it spent much of its time rendering: 0.86, and
the diffusion stage's colours rose from 0.46 to 0.58 (README, "The VAE stage on fewer people").
The UNet reads the person mask by area (`data.person_mask_resize`): each latent pixel gets the share
of its 4x4 block the person covers, not the one pixel the original's nearest resize picks, which
at this size left the samples' silhouettes a pixel off (IoU 0.675 -> 0.765, SSIM 0.70 -> 0.78).
The diffusion stage trains 800 steps of batch 32 (lr 2e-3, cosine to 0.1x), weights the loss by
Min-SNR-5 and the hair, face and shoes 7x (`data.part_loss_weights`, the original's `loss_weight`
option, with the renderer's part map for its parser's: at 16x12 the hair is 2-4 latent pixels, and
unweighted the model drew the head in the top's colour; hair colour 0.24 -> 0.66), standardizes the
CLIP embeddings by statistics of its first 256 examples (`model.standardize_conditions`: the tiny
random CLIP's embeddings differ little between people)
and draws from 5,000 distinct pairs, each rendered once and then memoised (the run sees each about
5 times; with 512 pairs long runs memorised them: the test pairs' eps error rose from 0.041 at step
4000 to 0.065 at 12000 of batch 8).
Sample it with stochastic DDIM and guidance, as the main job does: `sample.py ... --eta 1
--guidance text=3,style=3` (or eval.py with the same flags). After the main job (about 10 min on
an idle 2-core machine, the install included, README) its test-pair samples reach colour accuracy
0.67, silhouette IoU 0.78 and SSIM 0.77, and edit_success 0.375
(eval.py --protocol synthetic --num_examples 32 --eta 1 --guidance text=3,style=3). Colours keep
rising with the images seen (README, "What the tiny runs learn").
A continued run (a larger --config.train.num_steps) goes on at 0.1 x lr after step 800; pass
--config.optim.decay_steps=N as well to decay over the whole run instead.
"""
import ml_collections

from upgpt_jax.config_base import released_config


def get_config(stage: str = "diffusion") -> ml_collections.ConfigDict:
    """`stage` "diffusion" (the default) or "vae" (`--config configs/synthetic_tiny.py:vae`)."""
    config = released_config()
    model = config.model
    model.image_size = (64, 48)  # -> 16x12 latents.
    model.latent_channels = 4
    model.scale_by_std = True
    model.standardize_conditions = True
    model.unet.update(in_channels=5, out_channels=4, channels=32, channel_mult=(1, 2, 2), attention_levels=(1, 2),
                      num_heads=4, context_dim=64, norm_groups=8)
    model.vae.update(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, norm_groups=8)
    model.clip.update(text_width=64, text_layers=2, text_heads=4, vision_width=64, vision_layers=2,
                      vision_heads=4, image_size=32, patch_size=8, projection_dim=64)
    model.fusion.update(text_dim=64, style_dim=64, context_dim=64, learned_heads=4)
    config.optim.update(learning_rate=2e-3, warmup_steps=100, decay_steps=800, end_learning_rate_factor=0.1)
    config.diffusion.snr_gamma = 5.0
    config.train.update(batch_size=32, num_steps=800, log_every=50, checkpoint_every=200, ema_decay=0.999)
    config.data.num_examples = 5_000  # Rendered on demand (5-11 ms) by the read-ahead thread or data.num_workers
    # worker processes, and kept (~50 KB each, in each process that rendered it).
    if stage == "vae":
        config.train.update(stage="vae", batch_size=8, num_steps=1000, ema_decay=0.99, checkpoint_every=500)
        # 1,200 people, each seen ~7 times: rendering 4,800 new ones (~12 ms a pair, ~1 min of CPU)
        # was much of the 600-step stage, and the colours settle only after ~1,000 steps (README).
        config.data.num_examples = 1_200
        config.optim.update(learning_rate=2e-3, decay_steps=0)  # A decay stalls the colours (see README).
        config.train.vae.person_weight = 12.0  # garment colours after 600 steps: 0.58-0.74 of parts, 0.35 unweighted
    elif stage == "diffusion":
        config.data.person_mask_resize = "area"  # the silhouette's edge within a latent pixel (see above)
        # The small parts' eps error 7x (the original's `loss_weight`; see above): hair colour 0.24 -> 0.66.
        config.data.part_loss_weights = {"hair": 7.0, "face": 7.0, "shoes": 7.0}
    else:
        raise ValueError(f"configs/synthetic_tiny.py:<stage>: stage must be 'diffusion' or 'vae', got {stage!r}")
    return config
