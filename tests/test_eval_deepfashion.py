"""The DeepFashion evaluation (eval/folders.py, eval/protocols/deepfashion.py) against independent references.

References: pytorch_msssim 1.0.0 (what the original's scripts/eval_metrics.py called), the `lpips`
package with random VGG weights (test_lpips.py), FID through scipy's SVD (tr sqrt(S1 S2) is the
nuclear norm of Xc1^T Xc2 / (n - 1) for centred feature matrices: exact for the singular covariances
of a few images), KID through a hand-written unbiased MMD, torch's float ops for the original's
pixel round trip. FID/KID take a small random Flax feature network in place of the FID Inception
(checked against torch-fidelity in test_fid.py): what is tested here is which features of which
crops reach the statistics, and 2048-d covariances would cost half a minute of eigendecompositions.
Protocol runs use the shared DeepFashion samples in the original layout (tests/deepfashion_fixture.py).
"""
from __future__ import annotations

import csv

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as torch_ms_ssim
from pytorch_msssim import ssim as torch_ssim

from deepfashion_fixture import make_manual_dir, sample_paths
from references import nchw
from test_fid import hand_written_unbiased_mmd2
from test_lpips import reference_lpips, save_lpips_folder
from upgpt_jax.eval.folders import center_crop, center_crop_offsets, evaluate_folders
from upgpt_jax.eval.protocols import PROTOCOLS, EvalOptions, ProtocolError
from upgpt_jax.eval.protocols.deepfashion import original_name, original_pixels


def torchvision_offsets(size, crop):
    """torchvision.transforms.functional.center_crop's arithmetic, written out here."""
    return int(round((size[0] - crop[0]) / 2.0)), int(round((size[1] - crop[1]) / 2.0))


def write_images(folder, images, suffix):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"image_{index}{suffix}")


def related_images(count, size, seed):
    """Smooth random images and noisy copies of them (uint8)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (count, size[0] // 8 + 1, size[1] // 8 + 1, 3))
    truths = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :size[0], :size[1]]
    samples = np.clip(truths + rng.normal(0, 25, truths.shape) + 10, 0, 255)
    return truths.astype(np.uint8), samples.astype(np.uint8)


def reference_crops(folder, names, crop):
    """[0, 1] float32 NHWC crops read with PIL and cut by torchvision's offsets."""
    images = []
    for name in names:
        pixels = np.asarray(Image.open(next(folder.glob(name + ".*"))).convert("RGB"))
        top, left = torchvision_offsets(pixels.shape[:2], crop)
        images.append(pixels[top:top + crop[0], left:left + crop[1]])
    return np.stack(images).astype(np.float32) / 255.0


def test_center_crop_offsets_follow_torchvision():
    assert center_crop_offsets((256, 192), (256, 176)) == (0, 8)
    assert center_crop_offsets((7, 5), (4, 4)) == (2, 0)  # round(1.5) = 2, round(0.5) = 0 (half to even)
    image = np.arange(9 * 8 * 3).reshape(9, 8, 3)
    for crop in [(9, 8), (4, 3), (6, 5), (1, 2)]:
        top, left = torchvision_offsets(image.shape[:2], crop)
        np.testing.assert_array_equal(center_crop(image, crop), image[top:top + crop[0], left:left + crop[1]])
    with pytest.raises(ValueError, match="cannot centre-crop a 9x8 image to 10x8"):
        center_crop(image, (10, 8))


def test_ssim_and_ms_ssim_match_pytorch_msssim(tmp_path):
    truths, samples = related_images(3, (173, 168), seed=0)
    write_images(tmp_path / "gt", truths, ".png")
    write_images(tmp_path / "samples", samples, ".png")
    crop = (170, 164)  # odd offsets (1.5 -> 2), and large enough for MS-SSIM
    result = evaluate_folders(tmp_path / "gt", tmp_path / "samples", crop, batch_size=2)
    names = [f"image_{index}" for index in range(3)]
    assert result.names == names
    expected_truths = nchw(reference_crops(tmp_path / "gt", names, crop))
    expected_samples = nchw(reference_crops(tmp_path / "samples", names, crop))
    expected_ssim = torch_ssim(expected_samples, expected_truths, data_range=1, size_average=False).numpy()
    expected_ms_ssim = torch_ms_ssim(expected_samples, expected_truths, data_range=1, size_average=False).numpy()
    np.testing.assert_allclose(result.per_image["ssim"], expected_ssim, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.per_image["ms_ssim"], expected_ms_ssim, rtol=0, atol=1e-5)
    assert result.metrics["ssim"] == pytest.approx(expected_ssim.mean(), abs=1e-5)
    assert np.ptp(expected_ssim) > 1e-3 and expected_ssim.max() < 0.99  # distinct, imperfect scores
    assert "no LPIPS (vgg) weights" in result.notes["lpips"] and "no FID Inception" in result.notes["fid"]
    assert "lpips" not in result.metrics and "fid" not in result.metrics


class SmallFeatures(nn.Module):
    """A random stand-in for the FID Inception: (B, H, W, 3) in [0, 1] -> (B, 32)."""

    @nn.compact
    def __call__(self, images):
        x = nn.relu(nn.Conv(16, (5, 5), strides=(2, 2))(images))
        return nn.Dense(32)(jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1))


def reference_fid(features1, features2):
    centred1, centred2 = features1 - features1.mean(0), features2 - features2.mean(0)
    n = len(features1)
    trace_sqrt = scipy.linalg.svdvals(centred1 @ centred2.T).sum() / (n - 1)
    mean_term = np.sum((features1.mean(0) - features2.mean(0)) ** 2)
    return mean_term + (np.sum(centred1**2) + np.sum(centred2**2)) / (n - 1) - 2 * trace_sqrt


def test_lpips_fid_and_kid_match_references(tmp_path):
    truths, samples = related_images(3, (84, 80), seed=1)
    write_images(tmp_path / "gt", truths, ".jpg")
    write_images(tmp_path / "samples", samples, ".png")  # names match across extensions
    reference = reference_lpips("vgg", seed=2)
    lpips_dir = save_lpips_folder(reference, "vgg", tmp_path / "lpips")
    module = SmallFeatures()
    params = module.init(jax.random.key(3), jnp.zeros((1, 80, 76, 3)))["params"]
    crop = (80, 76)
    result = evaluate_folders(tmp_path / "gt", tmp_path / "samples", crop, lpips=lpips_dir,
                              inception=(module, params), batch_size=2)
    names = [f"image_{index}" for index in range(3)]
    unit_truths = reference_crops(tmp_path / "gt", names, crop)
    unit_samples = reference_crops(tmp_path / "samples", names, crop)
    with torch.no_grad():
        quirk = reference(nchw(unit_samples), nchw(unit_truths)).view(-1).numpy()
        correct = reference(nchw(unit_samples), nchw(unit_truths), normalize=True).view(-1).numpy()
    np.testing.assert_allclose(result.per_image["lpips_original_quirk"], quirk, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.per_image["lpips"], correct, rtol=1e-4, atol=1e-6)
    assert np.abs(quirk - correct).min() > 1e-3  # the two scalings differ
    truth_features = np.asarray(module.apply({"params": params}, unit_truths), np.float64)
    sample_features = np.asarray(module.apply({"params": params}, unit_samples), np.float64)
    expected_fid = reference_fid(truth_features, sample_features)
    assert result.metrics["fid"] == pytest.approx(expected_fid, rel=1e-3)
    assert expected_fid > 1e-3
    # With subsets as large as the sets, every subset is the whole set: KID is its MMD, std 0.
    assert result.metrics["kid"] == pytest.approx(hand_written_unbiased_mmd2(sample_features, truth_features),
                                                  rel=1e-4, abs=1e-8)
    assert result.metrics["kid_std"] == pytest.approx(0.0, abs=1e-8)
    assert "subsets of 3 images" in result.notes["kid"] and "MS-SSIM needs" in result.notes["ms_ssim"]


def test_folder_errors_name_the_files(tmp_path):
    truths, samples = related_images(3, (24, 20), seed=4)
    write_images(tmp_path / "gt", truths, ".png")
    write_images(tmp_path / "samples", samples[:2], ".png")
    with pytest.raises(ProtocolError, match=r"samples lacks 1 of the 3 images in .*gt: image_2"):
        evaluate_folders(tmp_path / "gt", tmp_path / "samples", (16, 16))
    subset = evaluate_folders(tmp_path / "gt", tmp_path / "samples", (16, 16), names=["image_1"])
    assert subset.names == ["image_1"] and subset.per_image["ssim"].shape == (1,)
    write_images(tmp_path / "samples", samples, ".png")
    Image.fromarray(samples[0]).save(tmp_path / "samples" / "stray.png")
    with pytest.raises(ProtocolError, match=r"holds 1 images with no ground truth in .*gt: stray"):
        evaluate_folders(tmp_path / "gt", tmp_path / "samples", (16, 16))
    with pytest.raises(ProtocolError, match=r"image_0.png: cannot centre-crop a 24x20 image to 32x16"):
        evaluate_folders(tmp_path / "gt", tmp_path / "samples", (32, 16), names=["image_0"])
    with pytest.raises(ProtocolError, match=r"--lpips_dir .*gt: .*vgg16.safetensors"):  # weights not there
        evaluate_folders(tmp_path / "gt", tmp_path / "samples", (16, 16), lpips=tmp_path / "gt", names=["image_0"])
    with pytest.raises(ProtocolError, match="nowhere: not a directory"):
        evaluate_folders(tmp_path / "nowhere", tmp_path / "samples")


def test_original_names_and_pixels():
    name = original_name("WOMEN/Skirts/id_00001883/01_1_front.jpg", "WOMEN/Tees_Tanks/id_00007949/05_7_additional.jpg")
    assert name == "fashionWOMENSkirtsid0000188301_1front___fashionWOMENTees_Tanksid0000794905_7additional"
    levels = np.arange(256, dtype=np.uint8)
    tensor = torch.from_numpy(levels).float().div(255) * 2.0 - 1.0
    expected = ((tensor + 1.0) / 2.0).mul(255).byte().numpy()  # the original's test-step arithmetic
    np.testing.assert_array_equal(original_pixels(levels), expected)
    assert (expected != levels).any()


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    """The fixture layout plus an mm-test-all.csv (rows with from == to)."""
    root = make_manual_dir(tmp_path_factory.mktemp("deepfashion"))
    with open(root / "mm-test-all.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["from", "to", "multimodal", "segm"])
        writer.writerows([(path, path, True, True) for path in sample_paths()[:2]])
    return root


def original_ground_truth(manual_dir, target, size=None):
    """The original test step's ground-truth pixels, by torch slicing and torch arithmetic."""
    image = Image.open(manual_dir / "img_256" / target).convert("RGB")
    if size is not None:
        image = image.resize(size[::-1], Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    width = pixels.shape[2] * 176 // 192
    left = (pixels.shape[2] - width) // 2
    tensor = pixels[:, :, left:left + width].float().div(255) * 2.0 - 1.0
    return ((tensor + 1.0) / 2.0).mul(255).byte().permute(1, 2, 0).numpy()


def pair_rows(manual_dir, protocol):
    name = {"upgpt_pose_transfer": "pairs-test-all.csv", "upgpt_text_pose": "mm-test-all.csv"}[protocol]
    with open(manual_dir / name, newline="") as handle:
        return [(row["from"], row["to"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("protocol", ["upgpt_pose_transfer", "upgpt_text_pose"])
def test_protocol_evaluates_existing_samples(manual_dir, tmp_path, protocol):
    rows = pair_rows(manual_dir, protocol)
    samples = tmp_path / "samples"
    samples.mkdir()
    names = [original_name(*row) for row in rows]
    for name, (_, target) in zip(names, rows):
        Image.fromarray(original_ground_truth(manual_dir, target)).save(samples / f"{name}.jpg")
    options = EvalOptions(out_dir=str(tmp_path / "out"), data_dir=str(manual_dir), samples_dir=str(samples))
    result = PROTOCOLS[protocol](options)
    group = protocol.removeprefix("upgpt_")
    assert result.metrics[f"{group}/ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result.metrics[f"{group}/ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result.details["examples"] == names and "skipped" in result.details["notes"]["fid"]
    for name in names:  # the ground truth written is the original's, byte for byte
        assert (tmp_path / "out" / "gt" / f"{name}.jpg").read_bytes() == (samples / f"{name}.jpg").read_bytes()
    assert [image.shape for image in result.worst[0][1]] == [(256, 176, 3)] * 3

    noisy = np.asarray(Image.open(samples / f"{names[-1]}.jpg")).astype(np.float64)
    noisy += np.random.default_rng(5).normal(0, 40, noisy.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(samples / f"{names[-1]}.jpg")
    result = PROTOCOLS[protocol](options)
    ssims = result.per_example[f"{group}/ssim"]
    assert ssims[0] == pytest.approx(1.0, abs=1e-6) and ssims[-1] < 0.9
    assert result.worst[0][0].startswith(names[-1])
    quick = PROTOCOLS[protocol](EvalOptions(out_dir=str(tmp_path / "quick"), data_dir=str(manual_dir),
                                            samples_dir=str(samples), num_examples=1))
    assert quick.details["examples"] == names[:1] and len(quick.per_example[f"{group}/ssim"]) == 1


def test_protocol_input_errors(manual_dir, tmp_path):
    protocol = PROTOCOLS["upgpt_pose_transfer"]
    with pytest.raises(ProtocolError, match="give --data_dir"):
        protocol(EvalOptions(out_dir=str(tmp_path), samples_dir=str(tmp_path)))
    with pytest.raises(ProtocolError, match="no img_256/ folder"):
        protocol(EvalOptions(out_dir=str(tmp_path), data_dir=str(tmp_path), samples_dir=str(tmp_path)))
    (tmp_path / "samples").mkdir()
    with pytest.raises(ProtocolError, match=r"samples lacks 2 of the 2 images in .*gt: fashionWOMEN"):
        protocol(EvalOptions(out_dir=str(tmp_path / "out"), data_dir=str(manual_dir),
                             samples_dir=str(tmp_path / "samples")))
    with pytest.raises(ProtocolError, match="--lpips_dir"):  # before any sampling
        protocol(EvalOptions(out_dir=str(tmp_path / "out"), data_dir=str(manual_dir), lpips_dir=str(tmp_path)))
    with pytest.raises(ProtocolError, match="give --workdir"):
        protocol(EvalOptions(out_dir=str(tmp_path / "out"), data_dir=str(manual_dir)))


def test_protocol_generates_with_the_tiny_model(manual_dir, tmp_path, tiny_config, tiny_model):
    from upgpt_jax.weights.params_io import save_params

    save_params(tmp_path / "params", tiny_model[1], {"source": "random test weights"})
    options = EvalOptions(out_dir=str(tmp_path / "out"), params_dir=str(tmp_path / "params"), config=tiny_config,
                          data_dir=str(manual_dir), sampling={"num_steps": 2}, batch_size=2, seed=3)
    result = PROTOCOLS["upgpt_pose_transfer"](options)
    names = [original_name(*row) for row in pair_rows(manual_dir, "upgpt_pose_transfer")]
    height, width = tiny_config.model.image_size
    crop = (height, width * 176 // 192)
    assert result.details["crop"] == list(crop) and "not comparable" in result.details["crop_note"]
    assert result.details["sampling"]["num_steps"] == 2 and len(result.per_example["pose_transfer/ssim"]) == 2
    for name, (_, target) in zip(names, pair_rows(manual_dir, "upgpt_pose_transfer")):
        sample = np.asarray(Image.open(tmp_path / "out" / "samples" / f"{name}.jpg"))
        truth = np.asarray(Image.open(tmp_path / "out" / "gt" / f"{name}.jpg"))
        assert sample.shape == truth.shape == crop + (3,)
        expected = np.asarray(Image.open(_saved(original_ground_truth(manual_dir, target, (height, width)), tmp_path)))
        np.testing.assert_array_equal(truth, expected)
    assert np.isfinite(result.metrics["pose_transfer/ssim"]) and result.metrics["pose_transfer/ssim"] < 0.99


def _saved(image, folder):
    path = folder / "expected.jpg"
    Image.fromarray(image).save(path)
    return path
