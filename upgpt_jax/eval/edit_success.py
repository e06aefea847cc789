"""`edit_success`: does a text edit recolour one garment and leave the rest of the person alone?

The synthetic protocol (upgpt_jax/eval/protocols/synthetic.py) draws one edit per test pair
(:func:`choose_edit`, fixed by the eval seed and the pair's index): a garment the target pose
shows (top or bottom) and a new colour from that part's palette. The edit is a text edit as the
original app makes one, which has two text boxes: the part's style text ("a green top", whose CLIP
text features the planner puts in that part's style slot: the original's mix_style) and the
content text, rewritten to say the new colour where it named the old one (the `edit` task's
"content=words"; configs/demo_requests.jsonl). A style text alone against a content text that
still names the old colour contradicts it, and the model follows the content text (measured in
README, "What the tiny runs learn"). Under the colour-free protocol the content text names no
colour, so its edit is the style text's alone. The edited person is drawn as the `edit` task draws
one (Sampler.edit, with the seed of the unedited `pose_transfer` sample, so the two differ by the
edit only): by default confined to the region the model says the edit acts on (sampling
edit_region "inferred"); `eval.py --edit_region whole` measures the original's edit, which redraws
the whole person.

Scores per pair (nan where the target pose shows neither garment, so no edit was made):

- `edit/part_hit`: the edited part shows the requested colour, classified as
  part_colour_accuracy classifies (the median CIELAB of the part's pixels, nearest palette colour);
- `edit/others_kept`: every other scored part the pose shows (hair, the other garment, shoes)
  classifies as the same palette colour as in the unedited sample. "Keeps its colour" is measured
  against the unedited sample, not against the identity's colours, so a part the model already
  drew wrong without the edit does not count against the edit: this measures what the edit
  changed, and part_colour_accuracy measures the rest;
- `edit_success`: both, i.e. the edited part takes the requested colour and the others keep theirs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from upgpt_jax.data.synthetic.identity import PART_COLOUR_FIELDS, Identity, describe, describe_part
from upgpt_jax.eval.synthetic import PART_PALETTES, TargetLayout, part_colour_accuracy

EDITED_PARTS = ("top", "bottom")  # the garments an edit may recolour
EDIT_STREAM = 5  # keeps the edits' random draws apart from other uses of the eval seed


@dataclasses.dataclass(frozen=True)
class TextEdit:
    """Recolour `part` to the palette colour `colour` by the style text `words`, with `content` the
    edited person's content text."""

    part: str
    colour: str
    words: str
    content: str

    @property
    def assignments(self) -> list[str]:
        """The edit as the `edit` task's `edits` list (and sample.py --edit) spell it."""
        return [f"{self.part}=text:{self.words}", f"content={self.content}"]


def choose_edit(identity: Identity, layout: TargetLayout, seed: int, index: int,
                content_text: Callable[[Identity], str] = describe) -> TextEdit | None:
    """Pair `index`'s edit: one of the garments `layout` shows, and a colour of its palette that
    neither garment wears (the renderer never draws top and bottom in one colour, and a colour
    the other garment shows could be copied from its style crop rather than read from the edit);
    its content text is `content_text` (the protocol's: data.synthetic.describe or
    describe_colour_free) of the identity wearing the new colour. None when the pose shows neither
    garment."""
    shown = [part for part in EDITED_PARTS if part in layout.part_pixels]
    if not shown:
        return None
    rng = np.random.default_rng([seed, EDIT_STREAM, index])
    part = shown[int(rng.integers(len(shown)))]
    worn = {identity.top_colour, identity.bottom_colour}
    colours = [name for name in PART_PALETTES[part] if name not in worn]
    colour = colours[int(rng.integers(len(colours)))]
    recoloured = dataclasses.replace(identity, **{PART_COLOUR_FIELDS[part]: colour})
    return TextEdit(part, colour, describe_part(identity, part, colour), content_text(recoloured))


def edited_people(context: Any, people: Sequence[Any], edits: Sequence[TextEdit | None]) -> list[Any]:
    """Each test pair's edited person, planned by the `edit` task (sampling.tasks.plan) on
    `context` (a TaskContext whose examples are the pairs) from the pair's own person
    (`people[i]`), with the edit's style text and content text; the unedited person where
    `edits[i]` is None."""
    from upgpt_jax.sampling.tasks import plan

    planned = []
    for index, (person, edit) in enumerate(zip(people, edits, strict=True)):
        if edit is None:
            planned.append(person)
            continue
        request = {"task": "edit", "example": index, "text": person.text, "edits": edit.assignments}
        planned.append(plan(context, request).people[1])  # people: [unedited, edited]
    return planned


def sample_edits(sampler: Any, context: Any, people: Sequence[Any], identities: Sequence[Identity],
                 layouts: Sequence[TargetLayout], unedited: np.ndarray, seeds: Sequence[int], seed: int,
                 content_text: Callable[[Identity], str] = describe
                 ) -> tuple[np.ndarray, np.ndarray, list[TextEdit | None]]:
    """(unedited images, edited images (N, H, W, 3), the edits): pair i's edit (:func:`choose_edit`
    of its identity, target layout and the protocol's `content_text`) planned by
    :func:`edited_people` and drawn by `sampler` (a sampling.Sampler) as the `edit` task draws
    edits (Sampler.edit, so with its settings' edit_region) from `seeds[i]`, the seed of its
    `unedited` sample. Where no edit was made both images are the unedited sample; where one was,
    the unedited image is the one Sampler.edit drew beside the edit (the same seed and conditions
    as `unedited`)."""
    edits = [choose_edit(identity, layout, seed, index, content_text)
             for index, (identity, layout) in enumerate(zip(identities, layouts, strict=True))]
    planned = edited_people(context, people, edits)
    chosen = [index for index, edit in enumerate(edits) if edit is not None]
    before, after = np.array(unedited, copy=True), np.array(unedited, copy=True)
    if chosen:
        before[chosen], after[chosen], _ = sampler.edit(
            [people[index] for index in chosen], [planned[index] for index in chosen],
            [seeds[index] for index in chosen], progress=True)
    return before, after, edits


def edit_scores(edited: np.ndarray, unedited: np.ndarray, layouts: Sequence[TargetLayout],
                edits: Sequence[TextEdit | None]) -> dict[str, np.ndarray]:
    """Per pair (N,): `edit_success`, `edit/part_hit` and `edit/others_kept` (1.0 or 0.0; nan
    where `edits[i]` is None) of uint8 images `edited` and `unedited` (N, H, W, 3), both read where
    `layouts[i]` (the target pose's layout) puts the parts."""
    if len(edits) != len(layouts):
        raise ValueError(f"edit_scores: {len(edits)} edits but {len(layouts)} layouts")
    after = part_colour_accuracy(edited, layouts).predicted
    before = part_colour_accuracy(unedited, layouts).predicted
    hit, kept = np.full(len(edits), np.nan), np.full(len(edits), np.nan)
    for index, (edit, now, was) in enumerate(zip(edits, after, before)):
        if edit is None:
            continue
        hit[index] = float(now[edit.part] == edit.colour)
        kept[index] = float(all(now[part] == colour for part, colour in was.items() if part != edit.part))
    return {"edit_success": hit * kept, "edit/part_hit": hit, "edit/others_kept": kept}
