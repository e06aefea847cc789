"""synthetic_people examples and pairs: shapes, determinism, truthful text, styles, identity split."""
import numpy as np
import pytest

from upgpt_jax.data.synthetic import (
    PARTS,
    describe,
    generate,
    identity_from_id,
    identity_split,
    make_example,
    make_pair,
    render_example,
    split_identity_ids,
)
from upgpt_jax.data.synthetic.identity import CLOTHING_COLOURS, HAIR_COLOURS
from upgpt_jax.data.synthetic.mannequin import PART_INDEX
from upgpt_jax.data.synthetic.render import render_raster

KEYS = {"image", "mask", "smpl", "text", "styles", "style_present", "identity"}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key]
        else:
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.parametrize("image_size, style_size", [((64, 48), 32), ((256, 192), 224)])
def test_example_shapes_and_dtypes(image_size, style_size):
    example = make_example(3, "train", image_size=image_size, style_size=style_size)
    assert set(example) == KEYS
    height, width = image_size
    assert example["image"].shape == (height, width, 3) and example["image"].dtype == np.uint8
    assert example["mask"].shape == (height, width) and example["mask"].dtype == bool
    assert example["smpl"].shape == (85,) and example["smpl"].dtype == np.float32
    assert example["styles"].shape == (9, style_size, style_size, 3) and example["styles"].dtype == np.uint8
    assert example["style_present"].shape == (9,) and example["style_present"].dtype == bool
    assert isinstance(example["text"], str) and example["text"].startswith("a ")
    assert example["identity"].dtype == np.int64
    # This renderer draws no headwear, outer garment or accessories: flagged absent, black.
    for part in ("headwear", "outer", "accessories"):
        assert not example["style_present"][PARTS.index(part)]
        assert not example["styles"][PARTS.index(part)].any()
    for part in ("background", "top", "bottom", "shoes"):
        assert example["style_present"][PARTS.index(part)]


def test_examples_are_deterministic_per_seed():
    _assert_same(make_example(17, "test", seed=5), make_example(17, "test", seed=5))
    assert make_example(17, "test", seed=6)["image"].tobytes() != make_example(17, "test", seed=5)["image"].tobytes()
    assert make_example(18, "test", seed=5)["smpl"].tobytes() != make_example(17, "test", seed=5)["smpl"].tobytes()


def test_generate_matches_make_example_with_and_without_workers():
    serial = list(generate(6, "train", seed=2, start=40, chunk_size=2))
    parallel = list(generate(6, "train", seed=2, start=40, chunk_size=2, workers=2))
    for index, (a, b) in enumerate(zip(serial, parallel, strict=True)):
        _assert_same(a, b)
        _assert_same(a, make_example(40 + index, "train", seed=2))


def test_train_and_test_identities_are_disjoint():
    train = {int(make_example(i, "train")["identity"]) for i in range(120)}
    test = {int(make_example(i, "test")["identity"]) for i in range(40)}
    assert train and test and not train & test
    assert all(identity_split(i) == "test" for i in test) and all(i % 10 for i in train)
    ids = np.concatenate([split_identity_ids("train", 500), split_identity_ids("test", 500)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(500))
    with pytest.raises(ValueError, match="split"):
        split_identity_ids("validation")


def test_pairs_share_the_identity_and_differ_in_pose():
    pair = make_pair(23, seed=1)
    source, target = pair["source"], pair["target"]
    assert source["text"] == target["text"] == describe(identity_from_id(23, seed=1))
    assert int(source["identity"]) == int(target["identity"]) == 23
    np.testing.assert_array_equal(source["smpl"][72:82], target["smpl"][72:82])  # same body shape
    assert np.abs(source["smpl"][:72] - target["smpl"][:72]).max() > 0.1
    assert (source["mask"] != target["mask"]).sum() > 20
    np.testing.assert_array_equal(source["styles"][PARTS.index("background")],
                                  target["styles"][PARTS.index("background")])
    _assert_same(make_pair(23, seed=1)["target"], target)


def _nearest(palette: dict, colour: np.ndarray) -> str:
    names = list(palette)
    return names[int(np.argmin(np.sum((np.array([palette[n] for n in names]) - colour) ** 2, axis=1)))]


def test_text_names_the_rendered_colours():
    """The mean colour of the fully visible top / bottom / hair is nearest to the colour the text names."""
    checked = 0
    for index in range(80):
        example = make_example(index, "train")
        identity = identity_from_id(int(example["identity"]))
        raster = render_raster(identity, example["smpl"])
        image = np.clip(np.rint(raster.image), 0, 255)
        for part, palette, colour, words in (
                ("top", CLOTHING_COLOURS, identity.top_colour, f"{identity.top_colour} "),
                ("bottom", CLOTHING_COLOURS, identity.bottom_colour, f"{identity.bottom_colour} "),
                ("hair", HAIR_COLOURS, identity.hair_colour, f"{identity.hair_colour} hair")):
            visible = (raster.part == PART_INDEX[part]) & (raster.alpha >= 1)
            if visible.sum() < 5:
                continue
            assert _nearest(palette, image[visible].mean(axis=0)) == colour, (example["text"], part)
            assert words in example["text"]
            checked += 1
    assert checked > 200


def test_text_describes_each_attribute():
    for identity_id in range(40):
        identity = identity_from_id(identity_id)
        text = describe(identity)
        sleeve = {"sleeveless": "sleeveless", "short": "short-sleeve", "long": "long-sleeve"}[identity.sleeves]
        pattern = {"solid": "", "stripes": "striped ", "dots": "polka-dot ", "checks": "checked "}
        assert f"a {identity.figure} with {identity.hair_length} {identity.hair_colour} hair" in text
        assert f"{identity.top_colour} {pattern[identity.top_pattern]}{sleeve} top" in text
        assert f"{identity.bottom_colour} {pattern[identity.bottom_pattern]}{identity.bottom}" in text
        assert text.endswith(f"{identity.shoes_colour} shoes")


def test_style_crops_come_from_their_parts():
    example = make_example(8, "train")
    identity = identity_from_id(int(example["identity"]))
    styles = example["styles"]
    np.testing.assert_array_equal(styles[PARTS.index("background")],
                                  np.broadcast_to(np.array(identity.background, np.uint8), styles.shape[1:]))
    for part, colour in (("top", identity.top_colour), ("bottom", identity.bottom_colour)):
        crop = styles[PARTS.index(part)].reshape(-1, 3).astype(float)
        lit = crop[crop.sum(axis=1) > 60] if colour != "black" else crop[crop.sum(axis=1) > 0]
        assert len(lit) > 50
        assert _nearest(CLOTHING_COLOURS, lit.mean(axis=0)) == colour


def test_face_style_only_when_the_face_is_seen():
    example = make_example(12, "train")
    identity = identity_from_id(int(example["identity"]))
    front, back = example["smpl"].copy(), example["smpl"].copy()
    front[:3] = (np.pi, 0.0, 0.0)  # FrankMocap's upright person facing the camera
    back[:3] = (0.0, 0.0, np.pi)  # the same turned half-way round the vertical axis
    face = PARTS.index("face")
    front_example = render_example(identity, 12, front)
    assert front_example["style_present"][face] and front_example["styles"][face].any()
    back_example = render_example(identity, 12, back)
    assert not back_example["style_present"][face] and not back_example["styles"][face].any()
    assert back_example["style_present"][PARTS.index("hair")]
