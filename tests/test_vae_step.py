"""The VAE stage: its loss against diffusers' AutoencoderKL + the lpips package computed LDM's way
(summed over pixels, then divided by the pixel count), and its jitted train step (the loss falls on
a fixed batch; a non-finite batch leaves params, optimizer state and EMA untouched)."""
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from conftest import random_params
from references import diffusers_vae, nchw, nhwc, relative_error
from test_lpips import image_pair, reference_lpips, save_lpips_folder
from upgpt_jax.weights.torch_params import flax_to_torch_state_dict
from upgpt_jax.eval.lpips import load_lpips_from_folder
from upgpt_jax.models.upgpt import build_model
from upgpt_jax.sharding import make_mesh
from upgpt_jax.train.optimizer import make_optimizer
from upgpt_jax.train.state import abstract_state, make_init_fn
from upgpt_jax.train.loss_weights import person_pixel_weights
from upgpt_jax.train.vae_step import lpips_for_config, make_vae_train_step, vae_loss

HEIGHT, WIDTH = 48, 40  # AlexNet's relu5 needs about 40 pixels a side.


@pytest.fixture(scope="module")
def vae_config(tiny_config):
    config = tiny_config.copy_and_resolve_references()
    config.model.image_size = (HEIGHT, WIDTH)
    config.model.vae.update(channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8)
    config.train.update(stage="vae", ema_decay=0.9)
    config.train.vae.update(lpips_net="alex", lpips_weight=1.0)
    config.optim.update(learning_rate=1e-3, warmup_steps=0)
    return config


@pytest.fixture(scope="module")
def lpips_reference(tmp_path_factory):
    """(torch lpips module, the folder holding its random AlexNet weights in our layout)."""
    reference = reference_lpips("alex", seed=5)
    return reference, save_lpips_folder(reference, "alex", tmp_path_factory.mktemp("lpips"))


def test_loss_matches_ldm_recipe_in_pytorch(vae_config, lpips_reference):
    model = build_model(vae_config.model)
    images, _ = image_pair(2, HEIGHT, WIDTH, seed=6)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, method=lambda module, x: module.vae(x)))
    vae_params = random_params(nn.unbox(shapes)["params"]["vae"], seed=7)
    torch_vae = diffusers_vae(vae_config.model.vae)
    torch_vae.load_state_dict({key: torch.from_numpy(value) for key, value in flax_to_torch_state_dict(vae_params).items()})
    torch_vae.eval()
    torch_lpips, folder = lpips_reference
    _, lpips_params = load_lpips_from_folder(folder, "alex")
    rng = jax.random.key(8)
    kl_weight, lpips_weight = 20.0, 0.7  # a KL term big enough to be seen in the total

    loss, metrics = jax.jit(lambda p, x, key, lp: vae_loss(
        model, p, x, key, kl_weight=kl_weight, lpips_weight=lpips_weight, lpips_params=lp, lpips_net="alex",
    ))(vae_params, images, rng, lpips_params)

    with torch.no_grad():
        x = nchw(images)
        posterior = torch_vae.encode(x).latent_dist
        noise = nchw(np.array(jax.random.normal(rng, nhwc(posterior.mean).shape)))  # the draw vae_loss makes
        reconstruction = torch_vae.decode(posterior.mean + posterior.std * noise).sample
        perceptual = torch_lpips(x, reconstruction)  # (B, 1, 1, 1), added to every pixel as in LDM
        per_pixel = torch.abs(x - reconstruction) + lpips_weight * perceptual
        batch, elements = x.shape[0], math.prod(x.shape[1:])
        kl = posterior.kl()
        ldm_loss = per_pixel.sum() / batch + kl_weight * kl.sum() / batch
    assert relative_error(metrics["rec_l1"], torch.abs(x - reconstruction).mean().numpy()) <= 1e-4
    assert relative_error(metrics["kl"], kl.mean().numpy()) <= 1e-4
    assert relative_error(metrics["lpips"], perceptual.mean().numpy()) <= 1e-4
    assert relative_error(loss, (ldm_loss / elements).numpy()) <= 1e-4
    assert float(kl_weight * metrics["kl"] / elements) > 0.05 * float(loss)


def test_train_step_lowers_the_loss_and_skips_non_finite_batches(vae_config, lpips_reference):
    model = build_model(vae_config.model)
    optimizer = make_optimizer(vae_config.optim)
    mesh = make_mesh(vae_config.mesh)
    abstract, shardings = abstract_state(model, vae_config, optimizer, mesh)
    assert set(abstract.params) == {"vae"} and abstract.frozen_params == {}
    state = make_init_fn(model, vae_config, optimizer, shardings)()
    settings = vae_config.train.vae.copy_and_resolve_references()
    assert lpips_for_config(settings) is None  # no lpips_path: no perceptual term
    settings.lpips_path = str(lpips_reference[1])
    step = make_vae_train_step(model, vae_config, optimizer, shardings, mesh, lpips=lpips_for_config(settings))
    images, _ = image_pair(2, HEIGHT, WIDTH, seed=9)
    batch = {"image": images, "text_ids": np.zeros((2, 4), np.int32)}  # other pipeline keys are ignored

    losses = []
    for _ in range(5):
        state, metrics = step(state, batch)
        assert bool(metrics["finite"]) and {"lpips", "kl", "rec_l1", "lr", "grad_norm"} <= set(metrics)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.9 * losses[0], losses
    assert int(state.step) == 5 and int(state.skipped) == 0

    before = jax.tree.map(np.array, (state.params, state.opt_state, state.ema_params))
    poisoned = dict(batch, image=images.copy())
    poisoned["image"][1, 5, 3, 0] = np.nan
    state, metrics = step(state, poisoned)
    assert not bool(metrics["finite"]) and int(state.skipped) == 1 and int(state.step) == 6
    after = jax.tree.map(np.array, (state.params, state.opt_state, state.ema_params))
    jax.tree.map(np.testing.assert_array_equal, after, before)
    state, metrics = step(state, batch)
    assert bool(metrics["finite"]) and float(metrics["loss"]) < losses[0]


def test_person_weighted_loss_and_step(vae_config):
    """With pixel weights the L1 term is mean(p * |x - x_rec|) (rec_l1 stays the plain mean), and a
    step with config.train.vae.person_weight reads the batch's person mask."""
    model = build_model(vae_config.model)
    images, _ = image_pair(2, HEIGHT, WIDTH, seed=6)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, method=lambda module, x: module.vae(x)))
    vae_params = random_params(nn.unbox(shapes)["params"]["vae"], seed=7)
    rng = jax.random.key(8)
    latent_mask = np.full((2, HEIGHT // 2, WIDTH // 2, 1), -1.0, np.float32)
    latent_mask[:, 8:14, 6:12] = 1.0
    pixel_weights = person_pixel_weights(latent_mask, (HEIGHT, WIDTH), 5.0)

    def loss_with(weights):
        return jax.jit(lambda p, x, key: vae_loss(model, p, x, key, kl_weight=0.0, pixel_weights=weights))(
            vae_params, images, rng)

    plain_loss, plain = loss_with(None)
    weighted_loss, weighted = loss_with(pixel_weights)
    reconstruction, _ = model.apply({"params": {"vae": vae_params}}, images, rng, method=lambda m, x, k: m.vae(
        x, k, sample_posterior=True))
    error = np.abs(np.asarray(images, np.float64) - np.asarray(reconstruction, np.float64))
    assert relative_error(plain_loss, error.mean()) <= 1e-4
    assert relative_error(weighted_loss, (np.asarray(pixel_weights) * error).mean()) <= 1e-4
    assert relative_error(weighted["rec_l1"], plain["rec_l1"]) <= 1e-6
    assert abs(float(weighted_loss) - float(plain_loss)) > 1e-3 * float(plain_loss)

    config = vae_config.copy_and_resolve_references()
    config.train.vae.update(person_weight=5.0, lpips_weight=0.0)
    optimizer = make_optimizer(config.optim)
    mesh = make_mesh(config.mesh)
    _, shardings = abstract_state(model, config, optimizer, mesh)
    state = make_init_fn(model, config, optimizer, shardings)()
    step = make_vae_train_step(model, config, optimizer, shardings, mesh)
    with pytest.raises(KeyError, match="person_mask"):
        step(state, {"image": images})
    batch = {"image": images, "person_mask": latent_mask}
    step.lower(state, batch).compile()  # what distributed.compile_then_meet does in multi-process runs
    state, metrics = step(state, batch)
    assert bool(metrics["finite"]) and int(state.step) == 1
