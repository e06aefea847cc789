"""The released UPGPT hyper-parameters, as the one place configs start from.

Config files in `configs/` call `released_config()` and change what differs, so that
the model's structure is written down once. Every field can be overridden on the command
line (`--config.model.unet.channels=64`) because each entry point loads configs through
`ml_collections.config_flags`.
"""
from __future__ import annotations

import ml_collections

# The 9 body-part style slots, in the order of the original data loader (ldm/data/deepfashion_inshop.py).
STYLE_PARTS: tuple[str, ...] = (
    "face", "hair", "headwear", "background", "top", "outer", "bottom", "shoes", "accessories",
)

# Logical axis name -> mesh axis (upgpt_jax.sharding). Parameters are named with these logical
# axes (nn.with_logical_partitioning); the rules decide how they are sharded. Large weight
# dimensions go to "fsdp"; "tensor" is reserved for tensor parallelism (size 1 by default).
# "batch" places the batch dimension of every input batch and of the activations alike.
DEFAULT_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    # Activations (constrained at the UNet's block boundaries, models/layers.py). Megatron-style
    # tensor parallelism: attention heads and the feed-forward hidden are split over "tensor", the
    # residual stream and conv channels stay whole (convolutions are data/FSDP parallel only).
    ("activation_height", None),
    ("activation_width", None),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("conv_height", None),
    ("conv_width", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("context", None),
    ("time_embed", None),
    ("norm", None),
    ("pose", None),
    ("modality", None),
    ("tokens", None),
)


def released_config() -> ml_collections.ConfigDict:
    """The UPGPT pose-transfer model as released (configs/deepfashion/lowres.yaml upstream)."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.image_size = (256, 192)  # (height, width) of the RGB images.
    c.model.latent_channels = 4
    c.model.scale_factor = 0.18215  # Latents are scaled to ~unit variance before diffusion.
    c.model.scale_by_std = False  # True: the diffusion stage measures scale_factor (train/latent_scale.py).
    # True: the CLIP text/style embeddings are standardized by statistics of the training data,
    # measured over condition_stats_examples examples when a diffusion run starts (models/fusion.py).
    c.model.standardize_conditions = False
    c.model.condition_stats_examples = 256
    c.model.dtype = "float32"  # Compute dtype; "bfloat16" for fast training.
    c.model.param_dtype = "float32"  # Master weights stay fp32.

    c.model.unet = ml_collections.ConfigDict(dict(
        in_channels=5,  # 4 latent channels + the 1-channel person mask.
        out_channels=4,
        channels=224,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attention_levels=(0, 1, 2),
        num_heads=8,
        transformer_depth=1,
        context_dim=768,
        norm_groups=32,
        use_linear_projection=False,
        dropout=0.0,
        remat=False,
    ))

    c.model.vae = ml_collections.ConfigDict(dict(
        in_channels=3,
        out_channels=3,
        channels=128,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        z_channels=4,
        norm_groups=32,
    ))

    # CLIP ViT-L/14. `path` names a local Hugging Face CLIPModel folder; empty means random
    # weights with the shapes below (nothing is ever downloaded).
    c.model.clip = ml_collections.ConfigDict(dict(
        path="",
        text_width=768,
        text_layers=12,
        text_heads=12,
        vision_width=1024,
        vision_layers=24,
        vision_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        max_length=77,
        vocab_size=49408,
    ))

    # Multimodal fusion: context = [content text tokens | one token per style part | pose token].
    c.model.fusion = ml_collections.ConfigDict(dict(
        mode="concat",  # "concat" is the released model; "learned" adds a small transformer.
        num_parts=len(STYLE_PARTS),
        pose_dim=85,
        text_dim=768,
        style_dim=768,
        context_dim=768,
        learned_layers=2,
        learned_heads=8,
        # What an absent style part is: "null", the learned null_style token (models trained here);
        # "black_crop", the CLIP embedding of a black crop, as the original (released_weights).
        missing_style="null",
    ))

    c.diffusion = ml_collections.ConfigDict(dict(
        schedule="sqrt_linear",  # LDM's "linear": betas = linspace(sqrt(start), sqrt(end), T) ** 2.
        beta_start=0.00085,
        beta_end=0.012,
        num_timesteps=1000,
        prediction="eps",
        # > 0: Min-SNR-gamma loss weights (upgpt_jax.diffusion.loss); 0: LDM's unweighted loss.
        snr_gamma=0.0,
    ))

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw",
        learning_rate=2.5e-5,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        warmup_steps=10_000,
        # 0: constant after the warm-up (the original). N: cosine decay to end_learning_rate_factor * lr at update N.
        decay_steps=0,
        end_learning_rate_factor=0.0,
        grad_clip_norm=1.0,
    ))

    # The training loop (upgpt_jax.train). Steps count optimizer calls (micro-batches with
    # grad_accum_steps > 1); `batch_size` is the global batch of one step.
    c.train = ml_collections.ConfigDict(dict(
        stage="diffusion",  # "diffusion" (UNet + fusion; VAE and CLIP frozen) or "vae" (the autoencoder).
        batch_size=8,
        num_steps=100_000,
        log_every=50,
        checkpoint_every=1_000,
        keep_checkpoints=3,
        ema_decay=0.9999,
        # Per-example probability of replacing each condition by its null embedding, so that
        # sampling can use classifier-free guidance per modality.
        cond_dropout=ml_collections.ConfigDict(dict(text=0.1, style=0.1, pose=0.1)),
        grad_accum_steps=1,
        max_consecutive_nan=5,  # Stop after this many skipped steps in a row.
        # A step is skipped (no update, counted in `skipped`) when its loss or gradient norm is not
        # finite or its update's global norm exceeds this fraction of the weights' norm: a finite
        # loss can still come with an update that blows the weights up (a far too high learning rate).
        max_update_ratio=1.0,
        seed=0,  # Data order, noise, timesteps and dropout; `config.seed` initialises the model.
        # Every `sample_every` steps (0: never) process 0 writes a grid of samples for fixed
        # validation conditions to DIR/samples/ (and TensorBoard), with the `sampling` settings.
        sample_every=0,
        num_previews=8,
        # Start the VAE from a trained one: a VAE-stage workdir (its newest checkpoint's EMA) or a
        # converted-params folder (python -m upgpt_jax.convert). Empty: initialised from `seed`.
        init_vae_from="",
        # The VAE stage's loss (LDM's kl-f8 recipe without the discriminator): L1 + kl_weight * KL
        # + lpips_weight * LPIPS, the last only when `lpips_path` names local LPIPS weights.
        # person_weight > 0 (not LDM's) weights the L1 on the person and its rim 1 + person_weight
        # times the background (upgpt_jax/train/vae_step.py): garment colours come sooner.
        vae=ml_collections.ConfigDict(dict(kl_weight=1e-6, lpips_weight=1.0, lpips_path="", lpips_net="vgg",
                                           person_weight=0.0)),
        # (START, COUNT), on the command line `--config.train.profile_steps=10,5`: a jax.profiler
        # trace of steps START..START+COUNT-1 in DIR/profile/ (TensorBoard / xprof). (): no trace.
        profile_steps=(),
        # Peak dense FLOP/s per device in TFLOP/s for the logged `mfu`; 0: upgpt_jax.hardware's
        # table by device kind (no `mfu` / `tflops_per_device` where the kind is unknown, e.g. CPU).
        peak_tflops=0.0,
    ))

    # Sampling (sample.py, upgpt_jax.sampling, training sample grids). Guidance scales are per
    # condition, chained pose -> style -> text; 1.0 everywhere is no guidance (one UNet call per
    # step), which is what the released code ran.
    c.sampling = ml_collections.ConfigDict(dict(
        method="ddim",  # "ddim", "ddpm" or "dpmpp_2m".
        num_steps=50,
        eta=0.0,
        guidance=ml_collections.ConfigDict(dict(pose=1.0, style=1.0, text=1.0)),
        batch_size=8,
        seed=0,
        # Where an edit may change the person (sampling.SamplingSettings.edit_region): "inferred" or
        # "whole" (the original's edit).
        edit_region="inferred",
    ))

    # Training data. An empty `data_dir` renders `num_examples` synthetic_people pairs in memory
    # (the same records `python -m upgpt_jax.data.prepare` would store), so the default run needs
    # no preparation; otherwise `dataset` is read from a prepared TFDS `data_dir`.
    c.data = ml_collections.ConfigDict(dict(
        dataset="synthetic_people",
        data_dir="",
        num_examples=10_000,
        # The fraction of in-memory synthetic_people train records whose content text names no colours
        # (data.synthetic.describe_colour_free; chosen per record index), so the colours must come from
        # the style crops; eval.py --protocol synthetic_colour_free measures that reading.
        colour_free_text_fraction=0.0,
        # A folder written by `python -m upgpt_jax.train.precompute`: the diffusion stage then reads
        # VAE moments and CLIP embeddings instead of running the frozen encoders at every step.
        features_dir="",
        # True: person masks are -1 outside and -0.99216 inside, the released weights' values (see
        # data.transforms and released_weights); False: +1 inside (models trained here).
        original_mask_quirk=False,
        # How the person mask reaches latent resolution (data.transforms.mask_to_latent): "nearest"
        # (one pixel per latent pixel, the original's) or "area" (the fraction of the block covered,
        # which tells a small-image model where the silhouette's edge lies within a latent pixel).
        person_mask_resize="nearest",
        # part -> weight of the diffusion stage's eps error on the pixels that part covers (1 elsewhere),
        # e.g. {"hair": 11.0, "face": 11.0}: the original's data option `loss_weight`, which reads the parts
        # from a human parser's segmentation. Here only synthetic_people rendered in memory has them (the
        # renderer's part map; data.synthetic.part_weight_map names the parts); pooled to latent size,
        # each example's map divided by its mean (data.transforms.latent_loss_weights).
        part_loss_weights={},
        # Input worker processes (grain's mp_prefetch) that read records and run the transforms
        # (decode, tokenise, normalise; render, for the in-memory synthetic data); 0 = in the main
        # process. Worth it where those cost more than a step (benchmarks/input_pipeline.py, README);
        # the batches do not depend on it. In-memory synthetic data is memoised once per worker.
        num_workers=0,
    ))

    # Contrastive pre-training of a small random CLIP (`model.clip` shapes, no path) on the
    # synthetic people: python -m upgpt_jax.train.clip_pretrain --config ... --out DIR, then
    # --config.model.clip.path=DIR. Not used by the released configs, whose CLIP is pretrained.
    c.clip_pretrain = ml_collections.ConfigDict(dict(
        num_examples=3_000,  # train-split people rendered for it (each gives an image and <= 4 crops)
        num_test_examples=200,  # test-split people for the held-out retrieval accuracies
        num_steps=300,
        batch_size=128,  # (image, content text) pairs per step
        crops_per_image=2,  # (crop, part text) pairs per step, per image pair
        learning_rate=1e-3,
        warmup_steps=50,
        weight_decay=0.1,
        temperature=0.07,  # CLIP's initial 1 / logit scale (learned)
        text_length=32,  # tokens kept of the 77 (a text that does not fit is refused)
        log_every=50,
    ))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # When the devices span several slices (TPU multislice): how many slices each mesh axis spans
    # (-1: the slices left over); `mesh` stays the whole mesh's shape (upgpt_jax.sharding.make_mesh).
    c.mesh_dcn = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.axis_rules = DEFAULT_AXIS_RULES
    c.seed = 0
    return c


def released_weights(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` set to feed the released (converted) weights what the original fed them, for
    sampling and for fine-tuning from them (configs/upgpt_256.py, upgpt_512.py); returns it.

    - Person masks -1 outside and -0.99216 inside (`data.original_mask_quirk`): the original read
      0/1 palette PNGs through ToTensor (/255) and x * 2 - 1 and kept that "bug" for its trained
      model (upstream ldm/data/deepfashion_inshop.py:142-146, 228-239, 331-342; app.py:83-87;
      ldm/data/generate_utils.py:117), so +1 inside is an input the released UNet never saw; and
      resized to latent resolution by nearest neighbour (`data.person_mask_resize`), as torchvision did.
    - An absent style part is CLIP of the normalised black crop (`model.fusion.missing_style`
      "black_crop"; deepfashion_inshop.py:214, app.py:153, generate_utils.py:96-97), not the fusion's
      `null_style`, which converted weights only have as a random init.
    Models trained here keep the defaults (+1 inside, learned nulls), which guidance needs.
    """
    config.data.original_mask_quirk = True
    config.data.person_mask_resize = "nearest"
    config.model.fusion.missing_style = "black_crop"
    return config


def pod_config(topology: str, chips: int, per_chip_batch: int, fsdp: int = 1, remat: bool = False
               ) -> ml_collections.ConfigDict:
    """The released model trained on a TPU slice (`configs/pods/`): bf16 compute over fp32 master
    weights, a mesh of data x `fsdp`, a global batch of `per_chip_batch` x `chips`, per-block remat
    as given, and our Pallas flash-attention kernel for every self- and cross-attention
    (models/flash_attention.py). `pod` records the plan, so `python -m upgpt_jax.aot --config FILE`
    compiles for it."""
    c = released_config()
    c.model.dtype = "bfloat16"
    c.model.unet.remat = remat
    c.model.unet.attention_implementation = "flash"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp, tensor=1))
    c.train.batch_size = per_chip_batch * chips
    # libtpu_flags: compiler flags for LIBTPU_INIT_ARGS, set by train.py and the AOT command before libtpu
    # starts (upgpt_jax/tpu_flags.py). None by default: tpu_flags.ASYNC_COLLECTIVE_FLAGS (MaxText's) made
    # the v6e plan's weight all-gathers asynchronous but raised its HBM traffic 30.9 -> 34.3 GB per chip
    # (benchmarks/RESULTS.md), a loss on the roofline, which cannot see the overlap it buys.
    c.pod = ml_collections.ConfigDict(dict(topology=topology, chips=chips, per_chip_batch=per_chip_batch,
                                           libtpu_flags=()))
    return c
