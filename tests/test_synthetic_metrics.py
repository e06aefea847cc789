"""Synthetic fidelity metrics (upgpt_jax/eval/synthetic.py) against scikit-image, hand-made images
and ground-truth renders of the synthetic dataset."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from skimage.color import rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from upgpt_jax.data.synthetic import identity_from_id, make_example, make_pair, render, split_identity_ids
from upgpt_jax.data.synthetic.identity import CLOTHING_COLOURS, HAIR_COLOURS, SKIN_TONES
from upgpt_jax.eval.synthetic import (
    PART_PALETTES,
    SCORED_PARTS,
    TargetLayout,
    identity_consistency,
    mask_iou,
    part_colour_accuracy,
    person_segmentation,
    pose_transfer_scores,
    rgb_to_lab,
    silhouette_iou,
    target_layout,
)
from upgpt_jax.smpl.interpolate import interpolate_smpl
from upgpt_jax.smpl.kinematics import default_crop_box

NUM_EXAMPLES = 20


@pytest.fixture(scope="module")
def ground_truth():
    """20 test-split examples (unseen identities): their identities, images, masks and layouts."""
    examples = [make_example(index, "test", with_styles=False) for index in range(NUM_EXAMPLES)]
    identities = [identity_from_id(int(example["identity"])) for example in examples]
    return {
        "examples": examples,
        "identities": identities,
        "images": np.stack([example["image"] for example in examples]),
        "masks": np.stack([example["mask"] for example in examples]),
        "layouts": [target_layout(identity, example["smpl"]) for identity, example in zip(identities, examples)],
    }


def test_lab_matches_scikit_image():
    rng = np.random.default_rng(0)
    palettes = [CLOTHING_COLOURS.values(), HAIR_COLOURS.values(), SKIN_TONES]
    colours = np.concatenate([rng.random((500, 3)), np.array([c for p in palettes for c in p]) / 255.0,
                              np.array([[0, 0, 0], [1, 1, 1], [0.02, 0.03, 0.04]])])
    ours, reference = rgb_to_lab(colours), rgb2lab(colours[None])[0]
    # The sRGB matrix here has the standard's 4 digits, scikit-image's 6: a 0.02 difference at most.
    assert np.abs(ours - reference).max() < 0.05


def test_mask_iou_hand_computed():
    target = np.zeros((4, 4, 5), bool)
    target[0, 0:2, 0:3] = True  # 6 pixels
    predicted = np.zeros((4, 4, 5), bool)
    predicted[0, 0:3, 1:3] = True  # 6 pixels, 4 shared with the target: IoU 4 / 8
    predicted[1], target[1] = target[0], target[0]  # identical: 1
    predicted[2, 3, 4] = True
    target[2, 0, 0] = True  # disjoint: 0
    # pair 3: both empty: they agree, 1
    as_stored = target[..., None].astype(np.uint8) * 255  # the schema's (N, H, W, 1) 0/255 masks
    np.testing.assert_allclose(mask_iou(predicted, as_stored), [0.5, 1.0, 0.0, 1.0])


def test_segmentation_of_a_hand_made_image():
    """Sure pixels plus faint ones connected to them; an isolated faint speck, and a connected pixel
    closer to the background than the just-noticeable difference, stay background."""
    background = (214, 222, 232)
    image = np.broadcast_to(np.array(background, np.uint8), (12, 10, 3)).copy()
    image[3:7, 3:6] = CLOTHING_COLOURS["red"]
    image[7, 4] = (205, 213, 224)  # a faint rim pixel below the red block (Delta E 3.2)
    image[8, 4] = (206, 214, 225)  # and another one below it (2.8)
    image[9, 4] = (210, 218, 229)  # below that, an imperceptible one (1.5)
    image[1, 8] = (205, 213, 224)  # the faint colour, isolated
    expected = np.zeros((12, 10), bool)
    expected[3:7, 3:6] = True
    expected[7:9, 4] = True
    np.testing.assert_array_equal(person_segmentation(image), expected)
    np.testing.assert_array_equal(person_segmentation(image, background), expected)
    np.testing.assert_array_equal(person_segmentation(image.astype(np.float32) / 255.0), expected)


def test_ground_truth_renders_score_perfectly(ground_truth):
    """Up to the rims too faintly covered to see (the renderer's mask is any coverage)."""
    images, masks, layouts = ground_truth["images"], ground_truth["masks"], ground_truth["layouts"]
    backgrounds = [identity.background for identity in ground_truth["identities"]]
    for iou in (silhouette_iou(images, masks), silhouette_iou(images, masks, backgrounds)):
        assert iou.mean() >= 0.97 and iou.min() >= 0.92
    for layout, mask in zip(layouts, masks):
        np.testing.assert_array_equal(layout.mask, mask)
    accuracy = part_colour_accuracy(images, layouts, parts=SCORED_PARTS + ("skin",))
    assert accuracy.overall == 1.0
    assert all(value == 1.0 for value in accuracy.per_part.values()), accuracy.per_part
    assert accuracy.scored["top"] == accuracy.scored["bottom"] == NUM_EXAMPLES
    assert sum(accuracy.scored.values()) > 4 * NUM_EXAMPLES
    patterned = [i for i in ground_truth["identities"] if i.top_pattern != "solid" or i.bottom_pattern != "solid"]
    assert len(patterned) >= 5  # patterned garments are among those read correctly


def test_shifted_pose_lowers_silhouette_iou(ground_truth):
    pixels_per_camera_unit = default_crop_box((64, 48))[2] / 2  # a change of t_x moves the person by this
    shifted = []
    for example, identity in zip(ground_truth["examples"], ground_truth["identities"]):
        smpl = example["smpl"].copy()
        smpl[83] += 2.0 / pixels_per_camera_unit  # two pixels to the right
        shifted.append(render(identity, smpl)[0])
    reference = silhouette_iou(ground_truth["images"], ground_truth["masks"])
    assert np.all(silhouette_iou(np.stack(shifted), ground_truth["masks"]) < reference - 0.2)


def _differs_everywhere(a, b) -> bool:
    return all(getattr(a, name) != getattr(b, name)
               for name in ("hair_colour", "top_colour", "bottom_colour", "shoes_colour"))


def test_another_identity_in_the_same_pose_gets_the_colours_wrong(ground_truth):
    test_ids = split_identity_ids("test")
    images = []
    for example, identity in zip(ground_truth["examples"], ground_truth["identities"]):
        others = (identity_from_id(int(i)) for i in test_ids)
        other = next(candidate for candidate in others if _differs_everywhere(identity, candidate))
        images.append(render(other, example["smpl"])[0])
    accuracy = part_colour_accuracy(np.stack(images), ground_truth["layouts"])
    assert accuracy.overall <= 0.1
    assert accuracy.per_part["top"] == accuracy.per_part["bottom"] == 0.0


def test_part_colour_accuracy_on_hand_painted_images(ground_truth):
    """Requested colours painted flat into the layout; then a wrong top; then striped tops."""
    layout = ground_truth["layouts"][0]
    requested = layout.requested
    blank = np.full((64, 48, 3), 255, np.uint8)

    def painted(colours: dict) -> np.ndarray:
        image = blank.copy()
        for part, rgb in colours.items():
            image[layout.part_pixels[part]] = rgb
        return image

    parts = [part for part in SCORED_PARTS if part in layout.part_pixels]
    right = {part: PART_PALETTES[part][requested[part]] for part in parts}
    wrong_name = next(name for name in CLOTHING_COLOURS if name != requested["top"])
    wrong_top = right | {"top": CLOTHING_COLOURS[wrong_name]}
    accuracy = part_colour_accuracy(np.stack([painted(right), painted(wrong_top)]), [layout, layout])
    assert accuracy.per_part["top"] == 0.5
    assert accuracy.overall == (2 * len(parts) - 1) / (2 * len(parts))
    assert accuracy.predicted[1]["top"] == wrong_name

    # Stripes by rows: every third row in the other colour reads as the requested colour; two rows in three do not.
    rows = np.arange(64)[:, None, None]
    stripes = [np.where(rows % 3 == 0, CLOTHING_COLOURS[wrong_name], painted(right)),
               np.where(rows % 3 != 0, CLOTHING_COLOURS[wrong_name], painted(right))]
    only_top = TargetLayout(layout.mask, {"top": layout.part_pixels["top"]}, requested)
    striped = part_colour_accuracy(np.stack(stripes).astype(np.uint8), [only_top, only_top], parts=("top",))
    assert [p["top"] for p in striped.predicted] == [requested["top"], wrong_name]


def test_an_imperceptible_ripple_around_the_person_is_not_person(ground_truth):
    """A decoder's ripple: a 2-pixel band around the person, 1.8 Delta E off the background (below the
    just-noticeable difference), touching the person; the rest of the background stays flat."""
    images, masks = ground_truth["images"], ground_truth["masks"]
    rippled = images.copy()
    for image, mask, identity in zip(rippled, masks, ground_truth["identities"]):
        band = binary_dilation(mask, np.ones((3, 3), bool), iterations=2) & ~mask
        shifted = np.clip(np.array(identity.background) - 4, 0, 255)
        distance = np.linalg.norm(rgb_to_lab(shifted / 255.0) - rgb_to_lab(np.array(identity.background) / 255.0))
        assert 1.0 < distance < 2.3
        image[band] = shifted
    np.testing.assert_array_equal(silhouette_iou(rippled, masks), silhouette_iou(images, masks))


def test_noisy_background_is_not_person(ground_truth):
    """Gaussian noise (2 grey levels) raises the thresholds: no noise speck counts, the person still does."""
    rng = np.random.default_rng(1)
    noisy = np.clip(ground_truth["images"] + rng.normal(0, 2.0, ground_truth["images"].shape), 0, 255).astype(np.uint8)
    empty = np.broadcast_to(np.array(ground_truth["identities"][0].background), (64, 48, 3))
    empty = np.clip(empty + rng.normal(0, 2.0, empty.shape), 0, 255).astype(np.uint8)
    assert person_segmentation(empty).sum() == 0
    assert silhouette_iou(noisy, ground_truth["masks"]).mean() >= 0.93


def test_pose_transfer_scores_match_scikit_image(ground_truth):
    images = ground_truth["images"][:4]
    generated = np.roll(images, 1, axis=2)
    scores = pose_transfer_scores(generated, images)
    for index, (a, b) in enumerate(zip(generated, images)):
        expected_ssim = structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False)
        np.testing.assert_allclose(scores["ssim"][index], expected_ssim, rtol=1e-4)
        np.testing.assert_allclose(scores["psnr"][index], peak_signal_noise_ratio(b, a, data_range=255), rtol=1e-4)
    assert np.all(pose_transfer_scores(images, images)["ssim"] > 0.9999)


def test_identity_consistency_of_one_person_and_of_several():
    test_ids = split_identity_ids("test")
    pair = make_pair(int(test_ids[2]))
    poses = interpolate_smpl(pair["source"]["smpl"], pair["target"]["smpl"], 5, "slerp")
    identity = identity_from_id(int(test_ids[2]))
    layouts = [target_layout(identity, smpl) for smpl in poses]
    same = identity_consistency(np.stack([render(identity, smpl)[0] for smpl in poses]), layouts)
    assert same.agreement == 1.0 and same.colour_drift < 2.0 and same.pairs >= 12
    people = [identity_from_id(int(i)) for i in test_ids[2:7]]
    different = identity_consistency(np.stack([render(p, smpl)[0] for p, smpl in zip(people, poses)]), layouts)
    assert different.agreement <= 0.5 and different.colour_drift > 20.0


def test_bad_inputs_are_rejected(ground_truth):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        silhouette_iou(ground_truth["images"] / 127.5 - 1.0, ground_truth["masks"])
    with pytest.raises(ValueError, match="layouts"):
        part_colour_accuracy(ground_truth["images"][:2], ground_truth["layouts"][:1])
    with pytest.raises(ValueError, match="unknown parts"):
        part_colour_accuracy(ground_truth["images"][:1], ground_truth["layouts"][:1], parts=("hat",))
