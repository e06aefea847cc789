"""The multimodal fusion block: concat mode by hand, learned mode against PyTorch's transformer."""
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from upgpt_jax.models.fusion import MultimodalFusion

B, T, P, D, POSE = 3, 5, 4, 16, 85


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, T, D)).astype(np.float32), rng.standard_normal((B, P, D)).astype(np.float32),
            rng.standard_normal((B, POSE)).astype(np.float32))


def _init(module, text, style, pose):
    return nn.unbox(module.init(jax.random.key(0), text, style, pose))["params"]


def test_concat_is_text_style_and_projected_pose():
    text, style, pose = _inputs()
    module = MultimodalFusion(num_parts=P, text_dim=D, style_dim=D, context_dim=D)
    params = _init(module, text, style, pose)
    out = np.asarray(module.apply({"params": params}, text, style, pose))
    kernel, bias = np.asarray(params["pose_proj"]["kernel"]), np.asarray(params["pose_proj"]["bias"])
    assert kernel.shape == (POSE, D)
    expected = np.concatenate([text, style, (pose @ kernel + bias)[:, None]], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_drop_masks_substitute_null_embeddings_per_example():
    text, style, pose = _inputs()
    module = MultimodalFusion(num_parts=P, text_dim=D, style_dim=D, context_dim=D)
    params = _init(module, text, style, pose)
    full = np.asarray(module.apply({"params": params}, text, style, pose))
    present = np.ones((B, P), bool)
    present[1, 2] = False
    out = np.asarray(module.apply(
        {"params": params}, text, style, pose, style_present=present,
        drop_text=np.array([True, False, False]), drop_style=np.array([False, False, True]),
        drop_pose=np.array([False, True, False])))
    null_text, null_style = np.asarray(params["null_text"]), np.asarray(params["null_style"])
    np.testing.assert_allclose(out[0, :T], null_text)
    np.testing.assert_allclose(out[0, T:], full[0, T:])
    np.testing.assert_allclose(out[1, T + 2], null_style[2])  # the one absent part
    np.testing.assert_allclose(out[1, [T, T + 1, T + 3]], full[1, [T, T + 1, T + 3]])
    np.testing.assert_allclose(out[1, -1], np.asarray(params["null_pose"])[0])
    np.testing.assert_allclose(out[2, T:T + P], null_style)
    np.testing.assert_allclose(out[2, :T], full[2, :T])
    np.testing.assert_allclose(out[2, -1], full[2, -1])


def _torch_linear(params):
    layer = torch.nn.Linear(*params["kernel"].shape)
    layer.weight.data = torch.from_numpy(np.asarray(params["kernel"]).T.copy())
    layer.bias.data = torch.from_numpy(np.asarray(params["bias"]).copy())
    return layer


def _torch_norm(params, width):
    norm = torch.nn.LayerNorm(width, eps=1e-5)
    norm.weight.data = torch.from_numpy(np.asarray(params["scale"]).copy())
    norm.bias.data = torch.from_numpy(np.asarray(params["bias"]).copy())
    return norm


def _torch_encoder_layer(params, width, heads):
    """torch.nn.TransformerEncoderLayer (pre-norm, exact GELU) carrying our layer's weights."""
    layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True).eval()
    qkv = [np.asarray(params[name]["kernel"]).T for name in ("to_q", "to_k", "to_v")]
    layer.self_attn.in_proj_weight.data = torch.from_numpy(np.concatenate(qkv, 0))
    layer.self_attn.in_proj_bias.data = torch.from_numpy(
        np.concatenate([np.asarray(params[name]["bias"]) for name in ("to_q", "to_k", "to_v")]))
    layer.self_attn.out_proj = _torch_linear(params["to_out_0"])
    layer.linear1, layer.linear2 = _torch_linear(params["mlp_in"]), _torch_linear(params["mlp_out"])
    layer.norm1, layer.norm2 = _torch_norm(params["norm1"], width), _torch_norm(params["norm2"], width)
    return layer


def test_learned_mode_matches_torch_transformer():
    text, style, pose = _inputs(1)
    width, heads, layers = 24, 4, 2
    module = MultimodalFusion(mode="learned", num_parts=P, text_dim=D, style_dim=D, context_dim=width,
                              learned_layers=layers, learned_heads=heads)
    params = _init(module, text, style, pose)
    # Non-trivial norms, so a swapped scale/bias would show.
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), params)
    ours = np.asarray(module.apply({"params": params}, text, style, pose))

    with torch.no_grad():
        tokens_text = _torch_linear(params["text_proj"])(torch.from_numpy(text))
        tokens_style = _torch_linear(params["style_proj"])(torch.from_numpy(style))
        tokens_style = tokens_style + torch.from_numpy(np.array(params["part_embedding"]))
        tokens_pose = _torch_linear(params["pose_proj"])(torch.from_numpy(pose))[:, None]
        modality = torch.from_numpy(np.array(params["modality_embedding"]))
        tokens = torch.cat([tokens_text + modality[0], tokens_style + modality[1], tokens_pose + modality[2]], 1)
        for index in range(layers):
            tokens = _torch_encoder_layer(params[f"layers_{index}"], width, heads)(tokens)
        reference = _torch_norm(params["norm_out"], width)(tokens).numpy()
    assert ours.shape == (B, T + P + 1, width)
    assert np.abs(ours - reference).max() / np.abs(reference).max() <= 1e-4


@pytest.mark.parametrize("field, kwargs, message", [
    ("pose", dict(pose=np.zeros((B, 72), np.float32)), "pose_dim"),
    ("style", dict(style=np.zeros((B, P + 1, D), np.float32)), "num_parts"),
    ("text", dict(text=np.zeros((B, T, D + 1), np.float32)), "text_dim"),
])
def test_bad_condition_shapes_are_named(field, kwargs, message):
    text, style, pose = _inputs()
    module = MultimodalFusion(num_parts=P, text_dim=D, style_dim=D, context_dim=D)
    args = dict(text=text, style=style, pose=pose) | kwargs
    with pytest.raises(ValueError, match=message):
        module.init(jax.random.key(0), **args)


def test_concat_mode_requires_equal_widths():
    text, style, pose = _inputs()
    with pytest.raises(ValueError, match="use mode 'learned'"):
        MultimodalFusion(num_parts=P, text_dim=D, style_dim=D, context_dim=2 * D).init(
            jax.random.key(0), text, style, pose)


def test_standardized_context_is_the_fusion_of_standardized_embeddings(tiny_config, tiny_model):
    """UPGPT with standardize_conditions: (x - mean) * scale before the fusion, and the nulls of dropped
    modalities and absent parts are the fusion's own (not standardized)."""
    from upgpt_jax.models.upgpt import UPGPT, build_model, example_inputs

    config, plain_config = tiny_config.copy_and_resolve_references(), tiny_config.copy_and_resolve_references()
    config.model.standardize_conditions, plain_config.model.standardize_conditions = True, False
    model = build_model(config.model)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), **example_inputs(config.model)))["params"]
    _, params = tiny_model
    rng = np.random.default_rng(1)
    stats = {name: rng.standard_normal(leaf.shape).astype(np.float32) + (2.0 if "scale" in name else 0.0)
             for name, leaf in shapes["condition_stats"].items()}
    inputs = example_inputs(config.model, batch_size=3)
    text = rng.standard_normal(inputs["text"].shape).astype(np.float32)
    style = rng.standard_normal(inputs["style"].shape).astype(np.float32)
    pose = rng.standard_normal(inputs["pose"].shape).astype(np.float32)
    present = np.ones(style.shape[:2], bool)
    present[0, 1] = False
    masks = dict(style_present=present, drop_text=np.array([False, True, False]),
                 drop_style=np.array([False, False, True]), drop_pose=np.array([True, False, False]))

    out = model.apply({"params": {**params, "condition_stats": stats}}, text, style, pose, method=UPGPT.context,
                      **masks)
    plain = build_model(plain_config.model)
    plain_params = {name: tree for name, tree in params.items() if name != "condition_stats"}
    expected = plain.apply({"params": plain_params}, (text - stats["text_mean"]) * stats["text_scale"],
                           (style - stats["style_mean"]) * stats["style_scale"], pose, method=UPGPT.context, **masks)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # The dropped text of example 1 is the null text exactly, as without standardization.
    np.testing.assert_array_equal(np.asarray(out)[1, :text.shape[1]], np.asarray(params["fusion"]["null_text"]))
