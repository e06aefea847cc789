"""The released-weights settings (config_base.released_weights) against what the original computes.

References are built the original's way with transformers' PyTorch CLIPModel (what OpenAI CLIP's
encode_image / encode_text compute, see test_clip.py) on a tiny random CLIP saved to disk, and
torchvision's transforms written out in torch (ToTensor: HWC uint8 -> CHW / 255; Normalize:
(x - mean) / std; Resize NEAREST on PIL images: PIL's resize):
- an absent style part: `clip_norm(torch.zeros(3, 224, 224))` through the image encoder
  (upstream ldm/data/deepfashion_inshop.py:128-129, 214; app.py:75-76, 153; generate_utils.py:96-97);
- person masks: 0/1 palette PNGs through Resize(latent, NEAREST), ToTensor, x * 2 - 1 (app.py:83-87;
  deepfashion_inshop.py:142-146, 235-239), i.e. -1 outside and 2/255 - 1 inside;
- a text edit: the style text's CLIP text features in that part's slot (InferenceModel.mix_style,
  generate_utils.py:172-190), the content text's CLIP last hidden states as typed (app.py:262-268).
"""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from upgpt_jax.config_base import STYLE_PARTS, pod_config, released_weights
from upgpt_jax.models.clip import clip_config, clip_from_config
from upgpt_jax.models.upgpt import build_model
from upgpt_jax.sampling import ConditionError, LoadedModel, Person, TaskContext, plan
from upgpt_jax.sampling.sampler import condition_embeddings, encode_conditions
from upgpt_jax.tokenizer import load_clip_tokenizer, tokenize

# The original's CLIP normalisation constants (deepfashion_inshop.py:128-129), written out here.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
TOLERANCE = 1e-4  # relative, as test_clip.py


def _rel_err(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor of a uint8 image."""
    array = torch.from_numpy(np.array(image, np.uint8))
    return (array[None] if array.ndim == 2 else array.permute(2, 0, 1)).float().div(255)


@pytest.fixture(scope="module")
def torch_clip(tiny_config):
    keys = ("text_width", "text_layers", "text_heads", "vision_width", "vision_layers", "vision_heads",
            "image_size", "patch_size", "projection_dim", "max_length", "vocab_size")
    torch.manual_seed(0)
    return CLIPModel(clip_config(**{key: tiny_config.model.clip[key] for key in keys})).eval()


@pytest.fixture(scope="module")
def setups(tiny_config, tiny_model, torch_clip, tmp_path_factory):
    """{"trained": the tiny config as trained here, "released": with released_weights}, both on
    the tiny PyTorch CLIP and the tiny model's random weights."""
    folder = tmp_path_factory.mktemp("clip")
    torch_clip.save_pretrained(folder, safe_serialization=True)
    tokenizer = load_clip_tokenizer()
    result = {}
    for name in ("trained", "released"):
        config = tiny_config.copy_and_resolve_references()
        config.model.clip.path = str(folder)
        if name == "released":
            released_weights(config)
        clip, clip_params = clip_from_config(config.model.clip)
        result[name] = LoadedModel(config=config, model=build_model(config.model), params=tiny_model[1], clip=clip,
                                   clip_params=clip_params, tokenizer=tokenizer, mesh=None, source={})
    return result


def _context(loaded: LoadedModel, people: list[Person], **drops) -> np.ndarray:
    """The fusion's context of `people` as sampling builds it: (B, 77 + 9 + 1, D)."""
    conditions = condition_embeddings(loaded.clip, loaded.clip_params, encode_conditions(loaded, people))
    return np.asarray(loaded.model.apply({"params": loaded.params}, conditions.pop("text"), conditions.pop("style"),
                                         conditions.pop("pose"), **conditions, **drops, method="context"))


def _style_rows(context: np.ndarray, loaded: LoadedModel) -> np.ndarray:
    start = int(loaded.config.model.clip.max_length)
    return context[:, start:start + len(STYLE_PARTS)]


def _person(size: tuple[int, int], style_size: int, **fields) -> Person:
    rng = np.random.default_rng(1)
    mask = np.zeros(size, bool)
    mask[size[0] // 4:, size[1] // 3:] = True
    crop = rng.integers(0, 256, (style_size, style_size, 3), dtype=np.uint8)
    defaults = dict(text="a woman in a blue striped top", smpl=rng.normal(0, 0.3, 85).astype(np.float32), mask=mask,
                    style_images={"top": crop})
    return Person(**{**defaults, **fields})


def _image_features(torch_clip, pixels: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch_clip.get_image_features(pixel_values=pixels[None])[0].numpy()


def test_released_configs_set_the_original_inputs(tiny_config):
    from configs import upgpt_256, upgpt_512

    for module in (upgpt_256, upgpt_512):
        config = module.get_config()
        assert config.data.original_mask_quirk and config.model.fusion.missing_style == "black_crop"
        assert config.data.person_mask_resize == "nearest"
    for config in (tiny_config, pod_config("v5e:16x16", 256, 16)):  # trained here
        assert not config.data.original_mask_quirk and config.model.fusion.missing_style == "null"


def test_absent_parts_are_clip_of_the_black_crop_for_released_weights(setups, torch_clip):
    released = setups["released"]
    size = int(released.config.model.clip.image_size)
    person = _person(tuple(released.config.model.image_size), size)
    rows = _style_rows(_context(released, [person]), released)[0]
    black = _image_features(torch_clip, (torch.zeros(3, size, size) - MEAN) / STD)  # deepfashion_inshop.py:214
    top = _image_features(torch_clip, (_to_tensor(person.style_images["top"]) - MEAN) / STD)  # :212
    absent = [index for index, part in enumerate(STYLE_PARTS) if part != "top"]
    assert _rel_err(rows[absent], np.broadcast_to(black, (len(absent), black.size))) <= TOLERANCE
    assert _rel_err(rows[STYLE_PARTS.index("top")], top) <= TOLERANCE
    # Trained here: the learned null_style token of each absent part instead.
    trained = setups["trained"]
    null_style = np.asarray(trained.params["fusion"]["null_style"])
    trained_rows = _style_rows(_context(trained, [person]), trained)[0]
    np.testing.assert_array_equal(trained_rows[absent], null_style[absent])
    assert np.abs(null_style[absent] - black).max() > 10 * TOLERANCE * np.abs(black).max()


@pytest.mark.parametrize("setup", ["trained", "released"])
def test_dropped_style_is_the_learned_null_in_both_settings(setups, setup):
    """Dropout and guidance's unconditional branch (drop_style) keep the learned null_style."""
    loaded = setups[setup]
    person = _person(tuple(loaded.config.model.image_size), int(loaded.config.model.clip.image_size))
    rows = _style_rows(_context(loaded, [person], drop_style=np.array([True])), loaded)[0]
    np.testing.assert_array_equal(rows, np.asarray(loaded.params["fusion"]["null_style"]))


def test_released_person_mask_values_are_the_originals(setups):
    height, width = setups["released"].config.model.image_size
    mask = np.zeros((height, width), np.uint8)
    mask[height // 5:height - 3, width // 4:width - 7] = 1
    palette = Image.fromarray(mask, mode="P")  # the original's <pose>_mask.png: palette indices 0/1
    palette.putpalette([0, 0, 0, 255, 255, 255])
    downsample = 2 ** (len(setups["released"].config.model.vae.channel_mult) - 1)
    resized = palette.resize((width // downsample, height // downsample), Image.Resampling.NEAREST)
    original = (_to_tensor(np.asarray(resized)) * 2.0 - 1.0)[0].numpy()  # app.py:83-87
    outside, inside = np.unique(original).tolist()
    assert outside == -1.0 and inside == pytest.approx(-0.99216, abs=1e-5)
    # Trained here (synthetic_tiny): +1 inside, and each latent pixel the share of its block covered.
    assert setups["trained"].config.data.person_mask_resize == "area"
    share = Image.fromarray(mask.astype(np.float32)).resize((width // downsample, height // downsample), Image.BOX)
    trained = -1.0 + 2.0 * np.round(np.asarray(share) * 255) / 255
    person = _person((height, width), 32, mask=mask > 0)
    for setup, reference in (("released", original), ("trained", trained)):
        ours = encode_conditions(setups[setup], [person])["person_mask"][0, ..., 0]
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_text_edit_is_the_apps_mix_style_with_its_own_content_text(setups, torch_clip, tmp_path):
    loaded = setups["released"]
    size = int(loaded.config.model.clip.image_size)
    folder = tmp_path / "styles"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for part in ("top", "hair"):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{part}.jpg")
    mask_file = tmp_path / "mask.png"
    Image.fromarray(_person(tuple(loaded.config.model.image_size), size).mask.astype(np.uint8) * 255).save(mask_file)
    old, new = "a woman in a blue striped top", "a woman in a red striped shirt"
    request = {"task": "edit", "style_folder": str(folder), "text": old, "smpl": [0.1] * 85, "mask": str(mask_file),
               "edits": ["top=text:red striped shirt", f"content={new}"]}
    unedited, edited = plan(TaskContext(loaded.config), request).people
    assert (unedited.text, edited.text) == (old, new)
    context = _context(loaded, [unedited, edited])

    ids = tokenize(loaded.tokenizer, [old, new, "red striped shirt"])
    with torch.no_grad():
        states = torch_clip.text_model(input_ids=torch.tensor(ids[:2], dtype=torch.long)).last_hidden_state.numpy()
        top_text = torch_clip.get_text_features(input_ids=torch.tensor(ids[2:], dtype=torch.long))[0].numpy()
    hair = _image_features(torch_clip, (_to_tensor(np.asarray(Image.open(folder / "hair.jpg"))) - MEAN) / STD)
    length = int(loaded.config.model.clip.max_length)
    assert _rel_err(context[:, :length], states) <= TOLERANCE
    rows = _style_rows(context, loaded)
    assert _rel_err(rows[1, STYLE_PARTS.index("top")], top_text) <= TOLERANCE
    assert _rel_err(rows[:, STYLE_PARTS.index("hair")], np.stack([hair, hair])) <= TOLERANCE
    assert _rel_err(rows[1, STYLE_PARTS.index("top")], rows[0, STYLE_PARTS.index("top")]) > 0.1

    # Without content=, the edited sample keeps the person's content text, as the app does.
    request["edits"] = ["top=text:red striped shirt"]
    assert plan(TaskContext(loaded.config), request).people[1].text == old
    for edits, message in ((["top=text:"], "no words after 'text:'"), (["content="], "content text once"),
                           ([f"content={new}", "content=x"], "content text once")):
        with pytest.raises(ConditionError, match=message):
            plan(TaskContext(loaded.config), {**request, "edits": edits})
