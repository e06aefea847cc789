"""The reference run: synthetic_tiny's model and stages, trained about 12x longer (<= 2 h on a 2-core CPU).

One command (W is any folder, local or gs://), then its score:
  W=workdirs/synthetic_reference && \\
  python -m upgpt_jax.train.clip_pretrain --config configs/synthetic_reference.py --out $W/clip && \\
  python train.py --config configs/synthetic_reference.py:vae --workdir $W/vae && \\
  python train.py --config configs/synthetic_reference.py --workdir $W/diffusion \\
      --config.train.init_vae_from=$W/vae --config.model.clip.path=$W/clip
  python eval.py --protocol synthetic --workdir $W/diffusion --num_examples 64 --eta 1 --guidance text=3,style=3
  python eval.py --protocol synthetic_colour_free --workdir $W/diffusion --num_examples 64 --eta 1 --guidance text=3,style=3

The architecture is synthetic_tiny's (configs/synthetic_tiny.py), so what differs is only how long and
on what each stage trains:
- CLIP pre-training: 600 steps on 6,000 people (the main job: 300 on 3,000).
- VAE: batch 4 for 5,000 steps. More updates, not more images, settle the colours: at 600 steps of
  batch 8 the reconstructions' colour accuracy scattered 0.42-0.74 over seeds, and 1,200 steps of
  batch 4 (the same images, the same minutes) reached 0.72 (README, "What the tiny runs learn").
- Diffusion: 14,000 steps of batch 32 (448k images; the main job 25.6k), cosine over the whole run,
  over 30,000 distinct people (5,000 would be seen 90 times each, and the tiny UNet memorises
  repeated people). A quarter of the content texts name no colour
  (`data.colour_free_text_fraction`), so the colours must also be read from the style crops: the
  `synthetic_colour_free` protocol measures that.
Measured (README, "The reference run"): 1 h 42 min on a 2-core CPU. On 32 test pairs with eta 1 and
guidance 3:
- pose transfer: colour 0.945, IoU 0.88, SSIM 0.89;
- colour-free texts: colour 0.945;
- edit_success 0.875;
- the VAE's reconstructions: colour 0.98, IoU 0.91.
Its float16 release is committed in reference/synthetic_reference/ (python -m upgpt_jax.rundir.release).
"""
import importlib.util
import pathlib

import ml_collections


def _synthetic_tiny(stage: str) -> ml_collections.ConfigDict:
    """configs/synthetic_tiny.py's config for `stage`, read beside this file wherever it is run from."""
    spec = importlib.util.spec_from_file_location("synthetic_tiny", pathlib.Path(__file__).with_name("synthetic_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(stage)


def get_config(stage: str = "diffusion") -> ml_collections.ConfigDict:
    """`stage` "diffusion" (the default) or "vae" (`--config configs/synthetic_reference.py:vae`)."""
    config = _synthetic_tiny(stage)
    config.clip_pretrain.update(num_examples=6_000, num_steps=600)
    if stage == "vae":
        config.train.update(batch_size=4, num_steps=5_000, checkpoint_every=1_000)
        config.data.num_examples = 5_000  # the people its committed release was trained on
    else:
        config.train.update(num_steps=14_000, checkpoint_every=2_000)
        config.optim.decay_steps = 14_000
        config.data.update(num_examples=30_000, colour_free_text_fraction=0.25)
        config.data.part_loss_weights = {}  # its committed release was trained unweighted, before they existed
    return config
