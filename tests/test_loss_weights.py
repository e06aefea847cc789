"""The person-favouring loss weights (upgpt_jax/train/loss_weights.py) against scipy's binary
dilation (the VAE step's use of them is in tests/test_vae_step.py)."""
import numpy as np
import scipy.ndimage

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
