"""Weight files as PyTorch and safetensors write them: single, sharded behind an index, or absent."""

import json

import pytest
import safetensors.torch
import torch

from upgpt_jax.weights.weight_files import (
    WeightFileError,
    WeightFileNotFoundError,
    find_weight_file,
    read_state_dict,
    shard_files,
)


@pytest.fixture
def state_dict():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(torch.bfloat16)
    return module.state_dict()


def _write_shards(folder, state_dict, index_name, save):
    """Two shards, split by key, and the Hugging Face index naming them."""
    keys = sorted(state_dict)
    shards = {"shard-1": keys[:2], "shard-2": keys[2:]}
    suffix = ".safetensors" if "safetensors" in index_name else ".bin"
    for shard, shard_keys in shards.items():
        save({key: state_dict[key] for key in shard_keys}, folder / f"{shard}{suffix}")
    weight_map = {key: f"{shard}{suffix}" for shard, shard_keys in shards.items() for key in shard_keys}
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / index_name


def _assert_same(read, state_dict):
    assert sorted(read) == sorted(state_dict)
    for key, tensor in state_dict.items():
        assert read[key].dtype == tensor.dtype and torch.equal(read[key], tensor), key


@pytest.mark.parametrize(
    "index_name, save",
    [
        ("model.safetensors.index.json", safetensors.torch.save_file),
        ("pytorch_model.bin.index.json", torch.save),
    ],
)
def test_an_index_reads_and_merges_its_shards(tmp_path, state_dict, index_name, save):
    index = _write_shards(tmp_path, state_dict, index_name, save)
    assert [path.name for path in shard_files(index)] == [
        path.name for path in sorted(tmp_path.iterdir()) if path != index
    ]
    _assert_same(read_state_dict(index), state_dict)


def test_single_files_and_lightning_checkpoints(tmp_path, state_dict):
    safetensors.torch.save_file(state_dict, tmp_path / "model.safetensors")
    torch.save({"state_dict": state_dict, "epoch": 3}, tmp_path / "last.ckpt")
    for name in ("model.safetensors", "last.ckpt"):
        assert shard_files(tmp_path / name) == [tmp_path / name]
        _assert_same(read_state_dict(tmp_path / name), state_dict)


def test_missing_and_unreadable_files_are_named(tmp_path, state_dict):
    index = _write_shards(tmp_path, state_dict, "model.safetensors.index.json", safetensors.torch.save_file)
    (tmp_path / "shard-2.safetensors").unlink()
    with pytest.raises(WeightFileNotFoundError, match=r"model\.safetensors\.index\.json names shards.*shard-2"):
        read_state_dict(index)
    with pytest.raises(FileNotFoundError, match=r"weight file not found: .*absent\.bin"):
        read_state_dict(tmp_path / "absent.bin")

    (tmp_path / "bad.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(WeightFileError, match=r"bad\.index\.json: not a shard index"):
        read_state_dict(tmp_path / "bad.index.json")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(WeightFileError, match=r"weights\.npz: unknown weight file type '\.npz'"):
        read_state_dict(tmp_path / "weights.npz")


def test_find_weight_file_prefers_the_first_candidate_and_lists_what_it_found(tmp_path):
    candidates = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as raised:
        find_weight_file(tmp_path, candidates)
    message = str(raised.value)
    assert f"no weight file in {tmp_path}" in message
    assert "model.safetensors.index.json, model.safetensors, pytorch_model.bin" in message
    assert "found ['config.json']" in message

    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert find_weight_file(tmp_path, candidates) == tmp_path / "pytorch_model.bin"
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert find_weight_file(tmp_path, candidates) == tmp_path / "model.safetensors"
    with pytest.raises(WeightFileNotFoundError, match="weight folder not found"):
        find_weight_file(tmp_path / "nowhere", candidates)
