"""FID/KID: the Flax FID Inception against torch-fidelity's PyTorch one on the same random weights,
the Frechet distance against scipy's sqrtm, KID against a hand-written MMD, and the loader's errors.

The reference network is torch-fidelity's `FeatureExtractorInceptionV3`, a pure-torch re-implementation
of the TF FID graph with pytorch-fid's key names (pytorch-fid's own module subclasses torchvision, whose
wheels do not import beside the CPU torch here). The package's __init__ imports torchvision, so only the
module is imported, under a stand-in package (see `import_torch_fidelity_inception`). Its forward takes
uint8 images and resizes them with a TF1-style bilinear resize; pytorch-fid resizes with
`F.interpolate(bilinear, align_corners=False)`, so the reference is given that resize.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import jax
import numpy as np
import pytest
import safetensors.torch
import scipy.linalg
import torch
import torch.nn.functional as F
from flax.traverse_util import flatten_dict

from references import nchw, relative_error
from upgpt_jax.weights.torch_params import WeightConversionError, flax_to_torch_state_dict
from upgpt_jax.weights.weight_files import WeightFileNotFoundError
from upgpt_jax.eval.fid import FeatureStatistics, frechet_distance, kernel_inception_distance, load_statistics
from upgpt_jax.eval.inception import (
    FID_WEIGHTS_FILE, FIDInceptionV3, expected_params, inception_features, load_fid_inception, resize_bilinear,
)

HEIGHT, WIDTH = 64, 48


def import_torch_fidelity_inception() -> types.ModuleType:
    """torch_fidelity.feature_extractor_inceptionv3 without running the package's __init__."""
    spec = importlib.util.find_spec("torch_fidelity")
    saved = sys.modules.pop("torch_fidelity", None)
    stand_in = types.ModuleType("torch_fidelity")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = stand_in
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as module
    finally:
        sys.modules.pop("torch_fidelity")
        if saved is not None:
            sys.modules["torch_fidelity"] = saved
    return module


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A full FID-Inception state dict (pytorch-fid's keys, its classifier and BatchNorm counters
    included) with random weights and random BatchNorm statistics. The keys come from our params
    tree; torch-fidelity's strict load_state_dict then checks them against its own definition."""
    shapes = jax.tree.map(lambda leaf: np.zeros(leaf.shape, np.float32), expected_params(FIDInceptionV3()))
    literal = {segment for path in flatten_dict(shapes) for segment in path}  # no list indices in this net
    rng = np.random.default_rng(seed)
    state = {}
    for key, zeros in flax_to_torch_state_dict(shapes, literal_names=literal).items():
        if key.endswith("conv.weight"):
            value = rng.standard_normal(zeros.shape) * np.sqrt(2.0 / zeros[0].size)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, zeros.shape)
        elif key.endswith("bn.weight"):
            value = rng.uniform(0.7, 1.3, zeros.shape)
        else:  # BatchNorm bias and running mean
            value = 0.1 * rng.standard_normal(zeros.shape)
        state[key] = torch.from_numpy(value.astype(np.float32))
        if key.endswith("running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    state["fc.weight"] = torch.from_numpy(rng.standard_normal((1008, 2048)).astype(np.float32))
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[dict[str, torch.Tensor], object]:
    """(the random state dict, the path of the .pth file holding it under pytorch-fid's name)."""
    state = random_state_dict(seed=0)
    path = tmp_path_factory.mktemp("fid") / FID_WEIGHTS_FILE
    torch.save(state, path)
    return state, path


def test_features_match_torch_fidelity_with_pytorch_fid_resize(weights, monkeypatch):
    _, path = weights
    inception = import_torch_fidelity_inception()
    reference = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                      feature_extractor_weights_path=str(path))
    # pytorch-fid's resize in place of torch-fidelity's TF1 one (its forward casts uint8 to float first).
    monkeypatch.setattr(inception, "interpolate_bilinear_2d_like_tensorflow1x", lambda x, size, align_corners:
                        F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners))
    images = np.random.default_rng(1).integers(0, 256, (2, HEIGHT, WIDTH, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = reference(nchw(images))[0].numpy()
    # torch-fidelity maps u8 to (u8 - 128) / 128; pytorch-fid maps [0, 1] x to 2x - 1: equal for x = u8 / 256.
    module, params = load_fid_inception(path.parent)  # the folder form finds pytorch-fid's file name
    ours = np.asarray(inception_features(module, params, images.astype(np.float32) / 256))
    assert ours.shape == (2, 2048)
    assert relative_error(ours, expected) <= 1e-4
    assert relative_error(expected[0], expected[1]) > 1e-2  # the two images give different features


@pytest.mark.parametrize("size", [(299, 299), (19, 350), (64, 48)])
def test_resize_matches_torch_interpolate(size):
    images = np.random.default_rng(2).uniform(0, 1, (2, 100, 75, 3)).astype(np.float32)
    expected = F.interpolate(nchw(images), size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert relative_error(resize_bilinear(images, *size), expected.numpy()) <= 1e-5


def random_covariance(rng: np.random.Generator, dim: int, samples: int) -> np.ndarray:
    return np.cov(rng.standard_normal((samples, dim)) @ rng.standard_normal((dim, dim)), rowvar=False)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(3)
    dim = 64
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    sigma1, sigma2 = random_covariance(rng, dim, 500), random_covariance(rng, dim, 500)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    assert abs(frechet_distance(mu1, sigma1, mu2, sigma2) - expected) <= 1e-8 * abs(expected)
    # Equal statistics are at distance 0, also for rank-deficient covariances (fewer samples than dims).
    singular = random_covariance(rng, dim, 20)
    assert abs(frechet_distance(mu1, sigma1, mu1, sigma1)) <= 1e-9 * np.trace(sigma1)
    assert abs(frechet_distance(mu2, singular, mu2, singular)) <= 1e-6 * np.trace(singular)
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance(mu1, sigma1, mu2, -sigma2)


def test_feature_statistics_stream_merge_and_files(tmp_path):
    features = np.random.default_rng(4).normal(5.0, 2.0, (300, 16)) @ np.diag(np.linspace(0.5, 2, 16))
    streamed = FeatureStatistics(16)
    for batch in np.array_split(features[:200], 7):
        streamed.update(batch)
    shard = FeatureStatistics(16).update(features[200:])
    streamed.merge(shard)
    np.testing.assert_allclose(streamed.mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(streamed.sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    streamed.save(tmp_path / "stats.npz")
    restored = FeatureStatistics.load(tmp_path / "stats.npz").update(features[:10])
    np.testing.assert_allclose(restored.sigma, np.cov(np.concatenate([features, features[:10]]), rowvar=False),
                               rtol=1e-10, atol=1e-12)
    np.savez(tmp_path / "pytorch_fid.npz", mu=streamed.mu, sigma=streamed.sigma)  # pytorch-fid's --save-stats keys
    mu, sigma = load_statistics(tmp_path / "pytorch_fid.npz")
    np.testing.assert_array_equal(mu, streamed.mu)
    np.testing.assert_array_equal(sigma, streamed.sigma)
    with pytest.raises(ValueError, match=r"pytorch_fid.npz: missing \['count'\]"):
        FeatureStatistics.load(tmp_path / "pytorch_fid.npz")


def hand_written_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Mean kernel over pairs of distinct rows within each set minus twice the mean across sets."""
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
    off_diagonal = ~np.eye(len(x), dtype=bool)
    return kernel(x, x)[off_diagonal].mean() + kernel(y, y)[off_diagonal].mean() - 2 * kernel(x, y).mean()


def test_kid_matches_hand_written_mmd():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 32)), rng.standard_normal((40, 32)) + 0.3
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=40)
    expected = hand_written_unbiased_mmd2(x, y)  # a full-size subset is a permutation: the same MMD
    assert abs(mean - expected) <= 1e-10 * abs(expected) and std == 0
    mean, std = kernel_inception_distance(x, y, num_subsets=10, subset_size=20)
    assert mean > 0 and std > 0
    with pytest.raises(ValueError, match="subset_size 50"):
        kernel_inception_distance(x, y, subset_size=50)


def test_loader_errors_name_the_file_and_key(weights, tmp_path):
    state, _ = weights
    with pytest.raises(WeightFileNotFoundError, match=rf"nowhere.pth: expected pytorch-fid's {FID_WEIGHTS_FILE}"):
        load_fid_inception(tmp_path / "nowhere.pth")
    with pytest.raises(WeightFileNotFoundError, match=FID_WEIGHTS_FILE):
        load_fid_inception(tmp_path)  # an empty folder
    torch.save({"Conv2d_1a_3x3.conv.weight": state["Conv2d_1a_3x3.conv.weight"]}, tmp_path / "partial.pth")
    missing_key = r"partial.pth[\s\S]*missing[\s\S]*Mixed_7c/branch_pool/bn/running_var"
    with pytest.raises(WeightConversionError, match=missing_key):
        load_fid_inception(tmp_path / "partial.pth")
    misshaped = {"Mixed_5b.branch1x1.conv.weight": torch.zeros(64, 192, 3, 3)}
    safetensors.torch.save_file(misshaped, tmp_path / "misshaped.safetensors")
    with pytest.raises(WeightConversionError, match=r"misshaped.safetensors[\s\S]*Mixed_5b.branch1x1.conv.weight "
                                                    r"-> Mixed_5b/branch1x1/conv/kernel: got \(3, 3, 192, 64\)"):
        load_fid_inception(tmp_path / "misshaped.safetensors")
    torch.save({"AuxLogits.fc.weight": torch.zeros(2, 2)}, tmp_path / "torchvision.pth")
    with pytest.raises(WeightConversionError, match=r"unexpected[\s\S]*AuxLogits.fc.weight"):
        load_fid_inception(tmp_path / "torchvision.pth")
