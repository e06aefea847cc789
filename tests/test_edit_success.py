"""edit_success on hand-painted people, the colour-free content text, and training on it.

The eval protocols that use them run end to end in test_eval_synthetic.py; here every expected
value is worked out by hand: images are painted part by part in known palette colours, where the
renderer's layout puts the parts.
"""
import dataclasses
import re

import numpy as np
import pytest

from upgpt_jax.data.records import synthetic_pair_record
from upgpt_jax.data.synthetic import describe, describe_colour_free, identity_from_id, make_example, sample_identity
from upgpt_jax.data.synthetic.identity import CLOTHING_COLOURS, HAIR_COLOURS, SHOE_COLOURS, describe_part
from upgpt_jax.eval.edit_success import EDITED_PARTS, TextEdit, choose_edit, edit_scores, edited_people
from upgpt_jax.eval.synthetic import PART_PALETTES, SCORED_PARTS, target_layout

COLOUR_WORDS = set(CLOTHING_COLOURS) | set(HAIR_COLOURS) | set(SHOE_COLOURS)


@pytest.fixture(scope="module")
def posed():
    """(identity, layout) of a test example whose pose shows every scored part."""
    for index in range(40):
        example = make_example(index, "test")
        identity = identity_from_id(int(example["identity"]))
        layout = target_layout(identity, example["smpl"])
        if all(part in layout.part_pixels for part in SCORED_PARTS):
            return identity, layout
    raise AssertionError("no test example among the first 40 shows every scored part")


def painted(layout, colours):
    """uint8 (H, W, 3): a pale background with each part of `colours` (part -> palette name)
    painted flat in its palette colour where `layout` puts it."""
    image = np.full(layout.mask.shape + (3,), 225, np.uint8)
    for part, name in colours.items():
        image[layout.part_pixels[part]] = PART_PALETTES[part][name]
    return image


def other_colour(part, *avoid):
    return next(name for name in PART_PALETTES[part] if name not in avoid)


def test_edit_scores_by_hand(posed):
    identity, layout = posed
    before = {part: layout.requested[part] for part in SCORED_PARTS}
    new_top = other_colour("top", identity.top_colour, identity.bottom_colour)
    edit = TextEdit("top", new_top, describe_part(identity, "top", new_top), "unused here")
    cases = {  # edited image -> (part_hit, others_kept, success)
        "recoloured": ({**before, "top": new_top}, (1.0, 1.0, 1.0)),
        "unchanged": (before, (0.0, 1.0, 0.0)),
        "hair changed too": ({**before, "top": new_top, "hair": other_colour("hair", before["hair"])},
                             (1.0, 0.0, 0.0)),
        "wrong colour, shoes changed": ({**before, "top": other_colour("top", new_top, identity.top_colour),
                                         "shoes": other_colour("shoes", before["shoes"])}, (0.0, 0.0, 0.0)),
    }
    edited = np.stack([painted(layout, colours) for colours, _ in cases.values()] + [painted(layout, before)])
    unedited = np.stack([painted(layout, before)] * len(edited))
    scores = edit_scores(edited, unedited, [layout] * len(edited), [edit] * len(cases) + [None])
    for index, (name, (_, expected)) in enumerate(cases.items()):
        got = tuple(scores[key][index] for key in ("edit/part_hit", "edit/others_kept", "edit_success"))
        assert got == expected, name
    assert all(np.isnan(values[-1]) for values in scores.values())  # no edit: not scored


def test_others_kept_compares_with_the_unedited_sample_not_the_request(posed):
    """A part already wrong without the edit stays wrong with it: that is kept, not an edit failure."""
    identity, layout = posed
    wrong_hair = other_colour("hair", layout.requested["hair"])
    before = {**{part: layout.requested[part] for part in SCORED_PARTS}, "hair": wrong_hair}
    edit = TextEdit("bottom", other_colour("bottom", identity.top_colour, identity.bottom_colour), "words", "text")
    scores = edit_scores(painted(layout, {**before, "bottom": edit.colour})[None], painted(layout, before)[None],
                         [layout], [edit])
    assert scores["edit_success"][0] == 1.0


def test_choose_edit_is_seeded_and_asks_for_a_colour_no_garment_wears(posed):
    identity, layout = posed
    edits = [choose_edit(identity, layout, seed=0, index=index) for index in range(30)]
    assert edits == [choose_edit(identity, layout, seed=0, index=index) for index in range(30)]
    assert edits != [choose_edit(identity, layout, seed=1, index=index) for index in range(30)]
    assert {edit.part for edit in edits} == set(EDITED_PARTS)
    for edit in edits:
        assert edit.colour in PART_PALETTES[edit.part]
        assert edit.colour not in (identity.top_colour, identity.bottom_colour)
        assert edit.assignments == [f"{edit.part}=text:{edit.words}", f"content={edit.content}"]
        assert edit.colour in edit.words
    hidden = type(layout)(layout.mask, {"hair": layout.part_pixels["hair"]}, layout.requested)
    assert choose_edit(identity, hidden, 0, 0) is None


def test_the_edits_content_text_says_the_new_colour_where_the_old_one_was(posed):
    """The content text changes in one word, the edited garment's colour (and its article: "a pink
    top" -> "an orange top"); under the colour-free protocol it names no colour and stays the
    person's own."""
    identity, layout = posed
    for index in range(30):
        edit = choose_edit(identity, layout, seed=0, index=index)
        old_colour = getattr(identity, f"{edit.part}_colour")
        before, after = describe(identity).split(), edit.content.split()
        changed = [(was, now) for was, now in zip(before, after, strict=True)
                   if was != now and {was, now} != {"a", "an"}]
        assert changed == [(old_colour, edit.colour)], (describe(identity), edit.content)
        free = choose_edit(identity, layout, seed=0, index=index, content_text=describe_colour_free)
        assert free.content == describe_colour_free(identity)
        assert (free.part, free.colour, free.words) == (edit.part, edit.colour, edit.words)


def test_part_texts_name_the_garment_as_the_content_text_does():
    identity = identity_from_id(0)
    assert describe_part(identity, "top", "red") == "a red top"
    assert describe_part(identity, "top", "orange") == "an orange top"
    for bottom, words in (("skirt", "a blue skirt"), ("trousers", "blue trousers"), ("shorts", "blue shorts")):
        assert describe_part(dataclasses.replace(identity, bottom=bottom), "bottom", "blue") == words
    # In the identity's own colours, each part text is a phrase of its content text.
    for identity_id in range(20):
        identity = identity_from_id(identity_id)
        text = describe(identity)
        assert f"{identity.hair_colour} hair" == describe_part(identity, "hair") and describe_part(identity, "hair") in text
        assert describe_part(identity, "shoes") in text
        assert describe_part(identity, "bottom").split()[-2:] == [identity.bottom_colour, identity.bottom]
    with pytest.raises(ValueError, match="no style text for part 'face'"):
        describe_part(identity, "face")


def test_edited_people_are_the_edit_tasks_edited_person(tiny_config):
    """The style text goes in the part's slot (its crop leaves), the content text is the edit's."""
    from upgpt_jax.sampling import TaskContext
    from upgpt_jax.sampling.sources import DatasetExamples

    examples = DatasetExamples(tiny_config, "test")
    people = [examples.person(index) for index in range(2)]
    people[1].text = "a person in a top"
    edits = [TextEdit("top", "red", "a red top", "a woman in a red top"),
             TextEdit("bottom", "blue", "blue trousers", "a person in a top")]
    planned = edited_people(TaskContext(tiny_config, examples=examples), people, edits)
    for person, edit, edited in zip(people, edits, planned):
        assert edited.style_texts == {edit.part: edit.words} and edited.text == edit.content
        assert set(edited.style_images) == set(person.style_images) - {edit.part}
        np.testing.assert_array_equal(edited.mask, person.mask)
        np.testing.assert_array_equal(edited.smpl, person.smpl)
        assert edited.origin["edits"] == edit.assignments
    assert edited_people(TaskContext(tiny_config, examples=examples), people[:1], [None]) == people[:1]


def test_the_colour_free_text_names_garments_but_no_colour():
    for seed in range(200):
        identity = sample_identity(np.random.default_rng(seed))
        text = describe_colour_free(identity)
        assert not set(re.findall(r"[a-z]+", text)) & COLOUR_WORDS, text
        for words in (identity.figure, f"{identity.hair_length} hair", "top", identity.bottom, "shoes"):
            assert words in text, (words, text)
        assert text != describe(identity)
        if identity.top_pattern == "stripes":
            assert "striped" in text.split(" top")[0]


def test_a_fraction_of_training_records_takes_the_colour_free_text():
    plain = [synthetic_pair_record(index, "train", (64, 48), 32)[1] for index in range(12)]
    mixed = [synthetic_pair_record(index, "train", (64, 48), 32, colour_free_text_fraction=0.5)[1]
             for index in range(12)]
    changed = [index for index in range(12) if mixed[index]["text"] != plain[index]["text"]]
    assert 0 < len(changed) < 12
    for index in range(12):
        for key in ("image", "styles", "source_image", "smpl", "id"):
            np.testing.assert_array_equal(mixed[index][key], plain[index][key])
        identity = identity_from_id(int(plain[index]["identity"]))
        expected = describe_colour_free(identity) if index in changed else describe(identity)
        assert mixed[index]["text"] == expected
    again = [synthetic_pair_record(index, "train", (64, 48), 32, colour_free_text_fraction=0.5)[1]["text"]
             for index in range(12)]
    assert again == [record["text"] for record in mixed]
    every = synthetic_pair_record(0, "train", (64, 48), 32, colour_free_text_fraction=1.0)[1]
    assert every["text"] == describe_colour_free(identity_from_id(int(every["identity"])))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        synthetic_pair_record(0, "train", (64, 48), 32, colour_free_text_fraction=1.5)


def test_training_reads_the_fraction_from_the_config(tiny_config):
    from upgpt_jax.train.data import training_source

    config = tiny_config.copy_and_resolve_references()
    assert config.data.colour_free_text_fraction == 0.0
    config.data.colour_free_text_fraction = 1.0
    record = training_source(config.data, config.model)[0]
    assert record["text"] == describe_colour_free(identity_from_id(int(record["identity"])))
    config.data.data_dir = "/nowhere"
    with pytest.raises(ValueError, match="colour_free_text_fraction"):
        training_source(config.data, config.model)
