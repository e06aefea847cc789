"""configs/synthetic_reference.py: synthetic_tiny's model, trained longer; it loads from any folder."""
import importlib.util
import pathlib

import pytest

from upgpt_jax.train.config_checks import check_training_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# What the reference run may change: how long and on what each stage trains, never the model.
# data.part_loss_weights: the committed reference release was trained before the main job's weights.
TRAINING_LENGTH_AND_DATA = {"clip_pretrain.num_examples", "clip_pretrain.num_steps", "train.num_steps",
                            "train.batch_size", "train.checkpoint_every", "optim.decay_steps",
                            "data.num_examples", "data.colour_free_text_fraction", "data.part_loss_weights"}
MAPPING_VALUES = {"data.part_loss_weights"}  # settings whose value is itself a mapping (part -> weight)


def load(name: str, stage: str):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(stage)


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in MAPPING_VALUES:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("stage", ["diffusion", "vae"])
def test_the_reference_run_is_synthetic_tiny_trained_longer(stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it finds synthetic_tiny.py beside itself, not in the working folder
    tiny, reference = flat(load("synthetic_tiny", stage).to_dict()), flat(load("synthetic_reference", stage).to_dict())
    assert tiny.keys() == reference.keys()
    changed = {key for key in tiny if tiny[key] != reference[key]}
    assert changed <= TRAINING_LENGTH_AND_DATA, changed - TRAINING_LENGTH_AND_DATA
    assert reference["train.num_steps"] > tiny["train.num_steps"]
    assert reference["clip_pretrain.num_steps"] > tiny["clip_pretrain.num_steps"]
    check_training_config(load("synthetic_reference", stage))
    if stage == "diffusion":  # the cosine spans the whole run, over more people than the main job's
        assert reference["optim.decay_steps"] == reference["train.num_steps"]
        assert reference["data.num_examples"] > tiny["data.num_examples"]
        assert 0 < reference["data.colour_free_text_fraction"] < 1


def test_an_unknown_stage_is_refused_by_name():
    with pytest.raises(ValueError, match="stage must be 'diffusion' or 'vae', got 'vea'"):
        load("synthetic_reference", "vea")
