"""The multimodal fusion block (MFB): content text, per-part style and SMPL pose -> one context.

The UNet cross-attends to `context = [text tokens | one token per style part | pose token]`.

- mode "concat" is the released UPGPT: CLIP text states and CLIP style embeddings go in as they
  are (their widths must equal `context_dim`), and the 85 SMPL numbers are linearly projected to
  one token (`pose_proj`, `extra_cond_models.1.model` in the original checkpoint).
- mode "learned" projects each modality to `context_dim`, adds a learned modality embedding (and a
  per-part embedding to the style tokens, so the UNet knows which slot is the top and which the
  shoes) and mixes the tokens with a small pre-LayerNorm transformer.

Each modality has a learned null embedding. Training replaces a modality by its null with some
probability (condition dropout) so that sampling can use classifier-free guidance per modality;
the `drop_*` masks choose, per example, which modalities are replaced.

A style part a person lacks (`style_present` False) is, by `missing_style`:
- "null": that part's learned `null_style` token (models trained here);
- "black_crop": the style input as given, which is the CLIP embedding of the black crop that every
  record (data.schema) and every sampling request (pipeline.sampler) holds for an absent part. That
  is what the original fed its model: `clip_norm(torch.zeros(3, 224, 224))` through the CLIP image
  encoder (upstream ldm/data/deepfashion_inshop.py:214, app.py:153, ldm/data/generate_utils.py:96-97),
  so the released weights never saw `null_style`, which for converted weights is a random init.
Either way `drop_style` (dropout, guidance's unconditional branch) uses the learned `null_style`: the
released code built no unconditional context (its DDIMSampler ran with unconditional_conditioning=None).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from upgpt_jax.models.layers import Dtype, layer_norm, multi_head_attention, partitioned_dense

_NULL_INIT = nn.initializers.normal(stddev=0.02)
MISSING_STYLE = ("null", "black_crop")


class ConditionStandardizer(nn.Module):
    """(text - text_mean) * text_scale and (style - style_mean) * style_scale, with frozen statistics.

    CLIP embeddings share a large component across examples (the tiny random CLIP of the synthetic
    configs: the spread between examples is 0.1-0.3 of the embeddings' magnitude), so the part that
    names a colour is a small signal on a constant vector and the UNet learns to read it slowly.
    Standardizing by the training data's statistics (a mean per token and feature, one scale per
    modality) makes that part the signal. The statistics are measured once per run and never
    trained (`upgpt_jax/train/condition_stats.py`); initialised as the identity.
    """

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, text: jax.Array, style: jax.Array) -> tuple[jax.Array, jax.Array]:
        def statistic(name: str, init: nn.initializers.Initializer, shape: tuple[int, ...]) -> jax.Array:
            axes = ("tokens", "embed")[:len(shape)]
            return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

        standardized = []
        for name, value in (("text", text), ("style", style)):
            mean = statistic(f"{name}_mean", nn.initializers.zeros, value.shape[1:])
            scale = statistic(f"{name}_scale", nn.initializers.ones, ())
            standardized.append((value - mean.astype(value.dtype)) * scale.astype(value.dtype))
        return standardized[0], standardized[1]


def _select(drop: jax.Array | None, null: jax.Array, value: jax.Array) -> jax.Array:
    """Per example, `null` (broadcast over the batch) where `drop` is True, else `value`."""
    if drop is None:
        return value
    drop = jnp.asarray(drop, bool).reshape((-1,) + (1,) * (value.ndim - 1))
    return jnp.where(drop, null.astype(value.dtype)[None], value)


class FusionTransformerLayer(nn.Module):
    """A pre-LayerNorm self-attention + GELU MLP layer over the condition tokens."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = tokens.shape[-1]
        h = layer_norm(name="norm1", **precision)(tokens)
        tokens = tokens + multi_head_attention(h, None, num_heads=self.num_heads, qkv_bias=True, **precision)
        h = layer_norm(name="norm2", **precision)(tokens)
        h = partitioned_dense(4 * width, ("embed", "mlp"), name="mlp_in", **precision)(h)
        h = partitioned_dense(width, ("mlp", "embed"), name="mlp_out", **precision)(nn.gelu(h, approximate=False))
        return tokens + h


class MultimodalFusion(nn.Module):
    """Fuses the three condition modalities into the UNet's cross-attention context."""

    mode: str = "concat"
    num_parts: int = 9
    pose_dim: int = 85
    text_dim: int = 768
    style_dim: int = 768
    context_dim: int = 768
    learned_layers: int = 2
    learned_heads: int = 8
    missing_style: str = "null"  # "null" or "black_crop": what an absent style part is (module docstring)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _null(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...]) -> jax.Array:
        return self.param(name, nn.with_logical_partitioning(_NULL_INIT, axes), shape, self.param_dtype)

    @nn.compact
    def __call__(
        self,
        text: jax.Array,
        style: jax.Array,
        pose: jax.Array,
        *,
        style_present: jax.Array | None = None,
        drop_text: jax.Array | None = None,
        drop_style: jax.Array | None = None,
        drop_pose: jax.Array | None = None,
    ) -> jax.Array:
        """Returns the context (B, T + num_parts + 1, context_dim).

        text: (B, T, text_dim) CLIP token states; style: (B, num_parts, style_dim) per-part CLIP
        embeddings; pose: (B, pose_dim) SMPL numbers. `style_present` (B, num_parts) marks parts
        that exist; with `missing_style` "null" absent parts get that part's null token (with
        "black_crop" their input rows, the black crop's embedding, are kept). `drop_*` (B,) bool replace a whole
        modality by its null embedding (condition dropout, and the unconditional branch of
        classifier-free guidance).
        """
        if self.mode not in ("concat", "learned"):
            raise ValueError(f"model.fusion.mode must be 'concat' or 'learned', got {self.mode!r}")
        if self.missing_style not in MISSING_STYLE:
            raise ValueError(f"model.fusion.missing_style must be one of {MISSING_STYLE}, got {self.missing_style!r}")
        self._check_shapes(text, style, pose)
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        null_style = self._null("null_style", (self.num_parts, self.style_dim), ("tokens", "embed"))
        if style_present is not None and self.missing_style == "null":
            style = jnp.where(jnp.asarray(style_present, bool)[..., None], style,
                              null_style.astype(style.dtype)[None])
        text = _select(drop_text, self._null("null_text", text.shape[1:], ("tokens", "embed")), text)
        style = _select(drop_style, null_style, style)
        pose_token = partitioned_dense(self.context_dim, ("pose", "embed"), name="pose_proj", **precision)(
            pose.astype(self.dtype))[:, None, :]
        null_pose = self._null("null_pose", (1, self.context_dim), ("tokens", "embed"))
        pose_token = _select(drop_pose, null_pose, pose_token)

        if self.mode == "concat":
            return jnp.concatenate([text.astype(self.dtype), style.astype(self.dtype), pose_token], axis=1)

        text = partitioned_dense(self.context_dim, ("context", "embed"), name="text_proj", **precision)(text)
        style = partitioned_dense(self.context_dim, ("context", "embed"), name="style_proj", **precision)(style)
        style = style + self._null("part_embedding", (self.num_parts, self.context_dim),
                                   ("tokens", "embed")).astype(self.dtype)[None]
        modality = self._null("modality_embedding", (3, self.context_dim), ("modality", "embed")).astype(self.dtype)
        tokens = jnp.concatenate([text + modality[0], style + modality[1], pose_token + modality[2]], axis=1)
        for index in range(self.learned_layers):
            tokens = FusionTransformerLayer(self.learned_heads, name=f"layers_{index}", **precision)(tokens)
        return layer_norm(name="norm_out", **precision)(tokens)

    def _check_shapes(self, text: jax.Array, style: jax.Array, pose: jax.Array) -> None:
        """Shape errors name the condition and the config field, before XLA sees them."""
        expected = {
            "text": (text, 3, self.text_dim, "model.fusion.text_dim"),
            "style": (style, 3, self.style_dim, "model.fusion.style_dim"),
            "pose": (pose, 2, self.pose_dim, "model.fusion.pose_dim"),
        }
        for name, (value, ndim, width, field) in expected.items():
            if value.ndim != ndim or value.shape[-1] != width:
                raise ValueError(f"{name} condition has shape {value.shape}; expected {ndim} dims ending in "
                                 f"{width} ({field})")
        if style.shape[1] != self.num_parts:
            raise ValueError(f"style condition has {style.shape[1]} parts; expected {self.num_parts} "
                             "(model.fusion.num_parts)")
        if self.mode == "concat" and not self.text_dim == self.style_dim == self.context_dim:
            raise ValueError("fusion mode 'concat' feeds CLIP features to the UNet unprojected, so "
                             f"text_dim ({self.text_dim}), style_dim ({self.style_dim}) and context_dim "
                             f"({self.context_dim}) must be equal; use mode 'learned' otherwise")
