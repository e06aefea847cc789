"""Who a synthetic person is: clothes, hair, skin, body shape, background; and the text that says so.

An :class:`Identity` holds every attribute that stays fixed across poses, so two renders of
one identity (a pose-transfer pair) share clothes, colours, body shape and background. The
colours come from small *named* palettes: the content text names them ("a red striped
short-sleeve top"), and the palettes are spread far apart in RGB so that the mean colour of a
rendered garment stays nearest to its own name under shading and patterns (tests check this).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Garment and shoe colours. Names are what the text says; no two are close in RGB.
CLOTHING_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (240, 240, 236),
    "grey": (128, 128, 132),
    "red": (205, 32, 38),
    "orange": (236, 112, 22),
    "yellow": (245, 215, 40),
    "green": (40, 145, 65),
    "blue": (40, 80, 195),
    "purple": (120, 55, 155),
    "pink": (242, 140, 185),
    "brown": (120, 72, 38),
}
SHOE_COLOURS = ("black", "white", "brown", "red", "blue")
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (24, 20, 20),
    "brown": (96, 58, 32),
    "blonde": (218, 180, 105),
    "red": (165, 62, 28),
    "grey": (165, 165, 165),
}
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (250, 214, 190), (232, 184, 150), (205, 150, 112), (160, 108, 74), (110, 72, 48),
)
# Pale backgrounds (studio walls); sample_identity keeps them away from the clothing colours.
BACKGROUND_COLOURS: tuple[tuple[int, int, int], ...] = (
    (214, 222, 232), (222, 232, 214), (232, 220, 204), (226, 214, 232), (200, 200, 204),
    (236, 226, 226), (206, 226, 228),
)

FIGURES = ("woman", "man")
PATTERNS = ("solid", "stripes", "dots", "checks")
SLEEVES = ("sleeveless", "short", "long")
BOTTOMS = ("shorts", "skirt", "trousers")
HAIR_LENGTHS = ("short", "long")

_PATTERN_WORDS = {"solid": "", "stripes": "striped ", "dots": "polka-dot ", "checks": "checked "}
_SLEEVE_WORDS = {"sleeveless": "sleeveless", "short": "short-sleeve", "long": "long-sleeve"}
# Real FrankMocap betas of the sample poses sit within about +-1.7; shapes stay moderate.
_BETA_SCALE = 0.6
# Minimal RGB distance between the background and any garment colour, so the person stands out.
_MIN_BACKGROUND_DISTANCE = 60.0


@dataclasses.dataclass(frozen=True)
class Identity:
    """All pose-independent attributes of one synthetic person (colours are palette names)."""

    figure: str
    skin: tuple[int, int, int]
    hair_colour: str
    hair_length: str
    top_colour: str
    top_pattern: str
    sleeves: str
    bottom: str
    bottom_colour: str
    bottom_pattern: str
    shoes_colour: str
    background: tuple[int, int, int]
    betas: tuple[float, ...]


def _choice(rng: np.random.Generator, options, weights=None):
    """One of ``options`` (uniform, or by relative ``weights``); cheaper than ``rng.choice(p=...)``."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    cumulative = np.cumsum(weights, dtype=np.float64)
    return options[int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw every attribute from ``rng`` (a numpy Generator; the only source of randomness)."""
    figure = _choice(rng, FIGURES)
    colours = tuple(CLOTHING_COLOURS)
    top_colour = _choice(rng, colours)
    # Top and bottom in different colours keep the two garments (and the text) distinguishable.
    bottom_colour = _choice(rng, tuple(c for c in colours if c != top_colour))
    bottom = _choice(rng, BOTTOMS, (1, 1, 2) if figure == "woman" else (1, 0, 3))
    garment_rgb = np.array([CLOTHING_COLOURS[top_colour], CLOTHING_COLOURS[bottom_colour]], np.float64)
    backgrounds = [bg for bg in BACKGROUND_COLOURS
                   if np.min(np.linalg.norm(garment_rgb - np.array(bg), axis=-1)) > _MIN_BACKGROUND_DISTANCE]
    return Identity(
        figure=figure,
        skin=_choice(rng, SKIN_TONES),
        hair_colour=_choice(rng, tuple(HAIR_COLOURS)),
        hair_length=_choice(rng, HAIR_LENGTHS, (1, 2) if figure == "woman" else (5, 1)),
        top_colour=top_colour,
        top_pattern=_choice(rng, PATTERNS, (3, 1, 1, 1)),
        sleeves=_choice(rng, SLEEVES),
        bottom=bottom,
        bottom_colour=bottom_colour,
        bottom_pattern=_choice(rng, PATTERNS, (4, 1, 1, 1)),
        shoes_colour=_choice(rng, SHOE_COLOURS),
        background=_choice(rng, backgrounds),
        betas=tuple(float(b) for b in np.round(rng.normal(0.0, _BETA_SCALE, 10), 4)),
    )


def describe(identity: Identity) -> str:
    """The content text: figure, hair, top (colour, pattern, sleeves), bottom and shoes.

    e.g. "a woman with long brown hair in a red striped short-sleeve top, blue trousers and
    black shoes". Every word comes from an attribute, so the text is true of every render.
    """
    top = (f"{identity.top_colour} {_PATTERN_WORDS[identity.top_pattern]}"
           f"{_SLEEVE_WORDS[identity.sleeves]} top")
    bottom = f"{identity.bottom_colour} {_PATTERN_WORDS[identity.bottom_pattern]}{identity.bottom}"
    article = "an" if top[0] in "aeiou" else "a"
    return (f"a {identity.figure} with {identity.hair_length} {identity.hair_colour} hair in {article} {top}, "
            f"{bottom} and {identity.shoes_colour} shoes")


# The parts a style text can name (`describe_part`), with the identity's colour attribute of each.
PART_COLOUR_FIELDS = {"hair": "hair_colour", "top": "top_colour", "bottom": "bottom_colour",
                      "shoes": "shoes_colour"}


def describe_part(identity: Identity, part: str, colour: str | None = None) -> str:
    """The style text of one part, worded as the content text names it: "a red top", "an orange
    skirt", "blue trousers", "blonde hair", "black shoes"; in the identity's own colour, or in
    `colour` (an edit). The edit requests and the contrastive CLIP's (crop, text) pairs say it so."""
    if part not in PART_COLOUR_FIELDS:
        raise ValueError(f"no style text for part {part!r}; expected one of {sorted(PART_COLOUR_FIELDS)}")
    colour = colour or getattr(identity, PART_COLOUR_FIELDS[part])
    garment = {"top": "top", "bottom": identity.bottom}.get(part, part)
    if garment in ("trousers", "shorts", "hair", "shoes"):
        return f"{colour} {garment}"
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {garment}"


def describe_colour_free(identity: Identity) -> str:
    """The content text without colour words: figure, hair length, garments, patterns and sleeves.

    e.g. "a woman with long hair in a striped short-sleeve top, trousers and shoes". With it the
    text says which garments a person wears but not their colours, so the colours a model draws
    can only come from the style crops: the `synthetic_colour_free` eval protocol samples with it,
    and `data.colour_free_text_fraction` trains on it. :func:`describe` stays the dataset's text.
    """
    top = f"{_PATTERN_WORDS[identity.top_pattern]}{_SLEEVE_WORDS[identity.sleeves]} top"
    bottom = f"{_PATTERN_WORDS[identity.bottom_pattern]}{identity.bottom}"
    return f"a {identity.figure} with {identity.hair_length} hair in a {top}, {bottom} and shoes"
