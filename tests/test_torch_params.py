"""The generic torch <-> Flax parameter rule on a tiny model that has every kind of leaf."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from upgpt_jax.weights.torch_params import (
    WeightConversionError,
    flax_to_torch_state_dict,
    match_torch_keys,
    torch_to_flax_params,
)


class TorchBlock(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.norm(x))


class TorchTiny(torch.nn.Module):
    """Embedding, Conv2d, GroupNorm, a ModuleList of (LayerNorm, Linear) and a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.conv_in = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 8)
        self.blocks = torch.nn.ModuleList([TorchBlock(8), TorchBlock(8)])
        self.head = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(8, 5, bias=False))

    def forward(self, image: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv_in(image)).permute(0, 2, 3, 1) + self.embed(token)[:, None, None]
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class FlaxBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + nn.Dense(8, name="proj")(nn.LayerNorm(epsilon=1e-5, name="norm")(x))


class FlaxTiny(nn.Module):
    @nn.compact
    def __call__(self, image, token):
        x = nn.Conv(8, (3, 3), padding=1, name="conv_in")(image)
        x = nn.GroupNorm(4, epsilon=1e-5, name="norm")(x) + nn.Embed(10, 8, name="embed")(token)[
            :, None, None
        ]
        for index in range(2):
            x = FlaxBlock(name=f"blocks_{index}")(x)
        # torch `head.1` -> flax `head_1`: a Dense named so at the top level.
        return nn.Dense(5, use_bias=False, name="head_1")(nn.silu(x))


def _torch_model() -> TorchTiny:
    torch.manual_seed(0)
    model = TorchTiny().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:  # norms start at 1/0: perturb so a scale/bias swap shows
                param.add_(0.3 * torch.randn_like(param))
    return model


def _inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 6, 4, 3)).astype(np.float32), np.array([1, 7])


def _expected():
    image, token = _inputs()
    return jax.eval_shape(FlaxTiny().init, jax.random.key(0), image, token)


def _state_dict() -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in _torch_model().state_dict().items()}


def test_converted_torch_weights_reproduce_torch_outputs():
    model = _torch_model()
    image, token = _inputs()
    with torch.no_grad():
        reference = model(torch.from_numpy(image).permute(0, 3, 1, 2), torch.from_numpy(token))
    variables = torch_to_flax_params(model.state_dict(), _expected(), source="tiny.pt")
    assert set(variables) == {"params"}
    ours = FlaxTiny().apply(variables, image, token)
    reference = reference.numpy()
    assert np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)) <= 1e-4


def test_round_trip_restores_the_torch_state_dict():
    state_dict = _state_dict()
    params = torch_to_flax_params(state_dict, _expected()["params"], source="tiny.pt")
    back = flax_to_torch_state_dict(params, literal_names=("head_1",))
    assert set(back) == set(state_dict) - {"head.1.weight"} | {"head_1.weight"}
    back["head.1.weight"] = back.pop("head_1.weight")
    for key, value in state_dict.items():
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    # and torch accepts it strictly
    TorchTiny().load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_casts_to_expected_dtype_and_accepts_bfloat16_tensors():
    expected = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, jnp.bfloat16), _expected()["params"]
    )
    state_dict = {k: v.to(torch.bfloat16) for k, v in _torch_model().state_dict().items()}
    params = torch_to_flax_params(state_dict, expected, source="tiny_bf16.pt")
    kernel = params["conv_in"]["kernel"]
    assert kernel.dtype == jnp.bfloat16 and kernel.shape == (3, 3, 3, 8)
    reference = state_dict["conv_in.weight"].float().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(kernel.astype(np.float32), reference)


def test_one_error_lists_every_missing_unexpected_and_misshaped_key():
    state_dict = _state_dict()
    del state_dict["blocks.1.norm.weight"]
    state_dict["blocks.2.proj.weight"] = np.zeros((8, 8), np.float32)
    state_dict["conv_in.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    state_dict["embed.weight"] = np.zeros((11, 8), np.float32)
    with pytest.raises(WeightConversionError) as caught:
        torch_to_flax_params(state_dict, _expected(), source="broken.ckpt")
    error = caught.value
    message = str(error)
    assert "broken.ckpt" in message
    assert "1 missing, 1 unexpected, 2 misshaped" in message
    assert "blocks_1/norm/scale (8,)" in message
    assert "blocks.2.proj.weight (8, 8)" in message
    assert "conv_in.weight -> conv_in/kernel: got (5, 5, 3, 8), expected (3, 3, 3, 8)" in message
    assert "embed.weight -> embed/embedding: got (11, 8), expected (10, 8)" in message
    assert len(error.missing) == 1 and len(error.unexpected) == 1 and len(error.misshaped) == 2


def test_shapes_alone_validate_a_checkpoint_header():
    shapes = {k: tuple(v.shape) for k, v in _state_dict().items()}
    mapping = match_torch_keys(shapes, _expected(), source="header")
    assert mapping["blocks.0.norm.weight"] == ("blocks_0", "norm", "scale")
    assert mapping["head.1.weight"] == ("head_1", "kernel")
    assert mapping["embed.weight"] == ("embed", "embedding")
    shapes["norm.bias"] = (7,)
    with pytest.raises(WeightConversionError, match=r"norm\.bias -> norm/bias: got \(7,\)"):
        match_torch_keys(shapes, _expected(), source="header")
