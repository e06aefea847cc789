"""LPIPS parity with the `lpips` PyTorch package (v0.1) on random backbone and head weights.

The reference is the real `lpips.LPIPS` (ScalingLayer, slicing, normalize_tensor, NetLinLayer,
spatial average). Its only torchvision use is `tv.vgg16(...).features` / `tv.alexnet(...).features`;
the PyPI torchvision wheels are built against CUDA torch and fail to import beside the CPU torch
2.13.0 here, so the reference is given a stand-in `torchvision.models` whose `features` are written
out below from torchvision's own definitions (vgg.py cfg "D", alexnet.py). The stand-in lives in
sys.modules only while lpips is imported. Also imported by test_vae_step.py.
"""
from __future__ import annotations

import pathlib
import sys
import types

import jax
import numpy as np
import pytest
import safetensors.torch
import torch

from references import nchw, relative_error
from upgpt_jax.weights.torch_params import WeightConversionError
from upgpt_jax.eval.lpips import BACKBONE_FILES, HEAD_FILES, load_lpips, load_lpips_from_folder, lpips_distance

HEIGHT, WIDTH = 64, 48


def _vgg16_features() -> torch.nn.Sequential:
    layers, channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(channels, width, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
            channels = width
    return torch.nn.Sequential(*layers)


def _alexnet_features() -> torch.nn.Sequential:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def import_lpips() -> types.ModuleType:
    """The lpips package, imported with the stand-in torchvision (see the module doc)."""
    if "lpips" in sys.modules:
        return sys.modules["lpips"]

    def backbone(make_features):
        def build(pretrained=False, **_):
            assert not pretrained, "the reference backbone must be random (pnet_rand=True)"
            return types.SimpleNamespace(features=make_features())
        return build

    models = types.ModuleType("torchvision.models")
    models.vgg16, models.alexnet = backbone(_vgg16_features), backbone(_alexnet_features)
    stand_in = types.ModuleType("torchvision")
    stand_in.models = models
    saved = {name: sys.modules.pop(name) for name in ("torchvision", "torchvision.models") if name in sys.modules}
    sys.modules.update({"torchvision": stand_in, "torchvision.models": models})
    try:
        import lpips
    finally:
        for name in ("torchvision", "torchvision.models"):
            sys.modules.pop(name)
        sys.modules.update(saved)
    return lpips


def reference_lpips(net: str, seed: int) -> torch.nn.Module:
    """lpips.LPIPS(net) with random weights everywhere: He-normal backbone convs, small biases,
    positive heads (lpips clamps its trained heads to >= 0)."""
    torch.manual_seed(seed)
    model = import_lpips().LPIPS(net=net, pnet_rand=True, pretrained=False, verbose=False).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.startswith("lin"):
                param.copy_(noise.abs() / param.shape[1])
            elif param.ndim == 4:
                param.copy_(noise * np.sqrt(2.0 / param[0].numel()))
            else:
                param.copy_(0.05 * noise)
    return model


def lpips_state_dicts(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(torchvision-style backbone state dict, lpips-style heads state dict) of `reference_lpips`."""
    backbone, heads = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("net.slice"):  # net.slice2.5.weight: features index 5
            backbone["features." + key.split(".", 2)[2]] = value.contiguous()
        elif key.startswith("lin"):
            heads[key] = value.contiguous()
    backbone["classifier.0.weight"] = torch.zeros(4, 8)  # a full torchvision file also holds the classifier
    return backbone, heads


def save_lpips_folder(model: torch.nn.Module, net: str, folder: pathlib.Path) -> pathlib.Path:
    """Writes the weights under load_lpips_from_folder's names: backbone .safetensors for vgg and
    torchvision's cache name (.pth) for alex, heads as lpips' .pth."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone, heads = lpips_state_dicts(model)
    if net == "vgg":
        safetensors.torch.save_file(backbone, folder / BACKBONE_FILES[net][0])
    else:
        torch.save(backbone, folder / BACKBONE_FILES[net][-1])
    torch.save(heads, folder / HEAD_FILES[net][-1])
    return folder


def image_pair(batch: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two related image batches in [-1, 1] (the second a noisy, shifted copy of the first)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, height, width, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape) + 0.1, -1, 1).astype(np.float32)
    return x, y


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_matches_lpips_package(net, tmp_path):
    reference = reference_lpips(net, seed=1)
    _, params = load_lpips_from_folder(save_lpips_folder(reference, net, tmp_path), net)
    x, y = image_pair(2, HEIGHT, WIDTH, seed=2)
    unit_x, unit_y = (x + 1) / 2, (y + 1) / 2
    distance = jax.jit(lpips_distance, static_argnames=("net", "normalize_from_unit_range"))
    with torch.no_grad():
        expected_signed = reference(nchw(x), nchw(y)).view(-1).numpy()
        expected_unit = reference(nchw(unit_x), nchw(unit_y), normalize=True).view(-1).numpy()
    ours_signed = distance(params, x, y, net=net)
    ours_unit = distance(params, unit_x, unit_y, net=net, normalize_from_unit_range=True)
    assert ours_signed.shape == (2,)
    assert relative_error(ours_signed, expected_signed) <= 1e-4
    assert relative_error(ours_unit, expected_unit) <= 1e-4
    assert relative_error(expected_signed, expected_signed[::-1]) > 1e-3  # the two examples differ


def test_missing_or_wrong_files_name_the_file(tmp_path):
    folder = save_lpips_folder(reference_lpips("alex", seed=3), "alex", tmp_path / "alex")
    backbone, heads = folder / BACKBONE_FILES["alex"][-1], folder / HEAD_FILES["alex"][-1]
    with pytest.raises(FileNotFoundError, match=r"LPIPS vgg backbone weights not found at .*nowhere.pth: "
                                                r"expected a torchvision vgg16 state dict \(features.0.weight"):
        load_lpips("vgg", tmp_path / "nowhere.pth", heads)
    with pytest.raises(FileNotFoundError, match=r"LPIPS alex linear-head weights not found at .*none.pth"):
        load_lpips("alex", backbone, tmp_path / "none.pth")
    with pytest.raises(WeightConversionError, match=r"alexnet-owt-7be5be79.pth \(expected a torchvision vgg16"):
        load_lpips("vgg", backbone, heads)  # AlexNet tensors offered as VGG16's
    with pytest.raises(WeightConversionError, match=r"alex.pth \(expected a torchvision alexnet"):
        load_lpips("alex", heads, heads)  # no features.* keys at all
    with pytest.raises(FileNotFoundError, match=r"vgg16.safetensors, vgg16.pth, vgg16-397923af.pth"):
        load_lpips_from_folder(folder, "vgg")
    with pytest.raises(ValueError, match="squeeze"):
        load_lpips_from_folder(folder, "squeeze")
