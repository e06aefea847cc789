"""The person-favouring loss weights (upgpt_jax/train/loss_weights.py) against scipy's binary
dilation, and the diffusion step handing them to the eps loss when config.diffusion.person_weight
asks for them (the VAE step's use is in tests/test_vae_step.py)."""
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from test_train import random_features, small_config
from upgpt_jax.train import step as step_module
from upgpt_jax.train.build import build
from upgpt_jax.train.loss_weights import person_pixel_weights


def reference_weights(inside: np.ndarray, block: int, person_weight: float) -> np.ndarray:
    """1 + w on the mask dilated by a 3x3 square, each latent pixel a block x block square, mean 1."""
    rim = np.stack([scipy.ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)) for mask in inside])
    weights = 1.0 + person_weight * np.kron(rim, np.ones((block, block)))
    return weights / weights.mean()


def test_person_pixel_weights_are_the_dilated_mask_upsampled():
    rng = np.random.default_rng(0)
    inside = rng.random((2, 6, 5)) < 0.2
    inside[0, 0, 0] = True  # a corner pixel: the rim stays inside the image
    quirk_mask = np.where(inside, -0.99216, -1.0).astype(np.float32)[..., None]  # the original's values
    weights = np.array(person_pixel_weights(quirk_mask, (24, 20), 12.0))
    assert weights.shape == (2, 24, 20, 1)
    np.testing.assert_allclose(weights[..., 0], reference_weights(inside, 4, 12.0), rtol=1e-6)
    plain_mask = np.where(inside, 1.0, -1.0).astype(np.float32)[..., None]
    np.testing.assert_allclose(np.array(person_pixel_weights(plain_mask, (6, 5), 3.0))[..., 0],
                               reference_weights(inside, 1, 3.0), rtol=1e-6)


def test_the_diffusion_step_weights_the_eps_loss_by_the_person_mask(monkeypatch):
    """The step's loss is what eps_loss returns; a stand-in eps_loss returns a fixed linear read-out
    of the weights it was given, so the step's loss shows which weights reached it."""
    received = []

    def read_out_weights(model, params, batch, schedule, rng, **kwargs):
        weights = batch.get("loss_weights")
        received.append(weights is not None)
        if weights is None:
            return jnp.zeros(()), {}
        pattern = jnp.arange(weights.size, dtype=jnp.float32).reshape(weights.shape) % 7.0
        return jnp.mean(weights * pattern), {}  # no params: zero gradients, a harmless update

    monkeypatch.setattr(step_module, "eps_loss", read_out_weights)
    config = small_config()
    config.diffusion.person_weight = 5.0
    parts = build(config)
    features = random_features(config, 0)
    _, metrics = parts.stage.step(parts.init(), features)

    inside = features["person_mask"][..., 0] > -1
    expected = reference_weights(inside, 1, 5.0)
    pattern = np.arange(expected.size, dtype=np.float64).reshape(expected.shape) % 7.0
    assert received == [True]
    np.testing.assert_allclose(float(metrics["loss"]), (expected * pattern).mean(), rtol=1e-5)
