"""The conditions of one sample, resolved from user inputs and checked before any compute.

A `Person` is what the model is told about one image: the content text, the 85 SMPL numbers,
the person mask (the silhouette to fill, at image resolution) and, per style part, a crop or a
style text (a part with neither is absent: the model uses that part's null token). Inputs come
from files (images, style folders in the original layout, FrankMocap pickles, .npz, .json), from
numbers, or from dataset examples; every reader here turns a bad input into a `ConditionError`
that names the input and what was expected.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from upgpt_jax.config_base import STYLE_PARTS
from upgpt_jax.data.records import BadExampleError, load_style_folder, open_mask, open_rgb
from upgpt_jax.smpl.frankmocap import load_frankmocap_pickle, load_smpl_vector
from upgpt_jax.smpl.layout import SMPL_DIM


class ConditionError(ValueError):
    """A sampling input that cannot be used; the message names it and says what was expected."""


@dataclasses.dataclass
class Person:
    """Resolved conditions of one sample (host numpy arrays)."""

    text: str
    smpl: np.ndarray  # (85,) float32
    mask: np.ndarray  # bool (H, W) at image resolution
    style_images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # part -> uint8 (S, S, 3)
    style_texts: dict[str, str] = dataclasses.field(default_factory=dict)  # part -> text
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)  # JSON-able: where each condition came from

    def describe(self) -> dict[str, Any]:
        """The conditions as JSON (images by origin, not pixels)."""
        return dict(text=self.text, smpl=[round(float(x), 6) for x in self.smpl],
                    style_images=sorted(self.style_images), style_texts=dict(self.style_texts), **self.origin)

    def with_styles(self, images: Mapping[str, np.ndarray] = {}, texts: Mapping[str, str] = {}) -> Person:
        """A copy whose parts in `images`/`texts` are replaced (a part takes either an image or a text)."""
        style_images = {part: crop for part, crop in self.style_images.items() if part not in texts}
        style_texts = {part: text for part, text in self.style_texts.items() if part not in images}
        return dataclasses.replace(self, style_images={**style_images, **images}, style_texts={**style_texts, **texts})


def check_part(part: str, source: str) -> str:
    if part not in STYLE_PARTS:
        raise ConditionError(f"{source}: unknown style part {part!r}; the parts are {', '.join(STYLE_PARTS)}")
    return part


def check_person(person: Person, image_size: tuple[int, int], source: str) -> None:
    """Shapes and values the model needs, checked on the host so errors name the request."""
    smpl = np.asarray(person.smpl)
    if smpl.shape != (SMPL_DIM,) or not np.all(np.isfinite(smpl)):
        raise ConditionError(f"{source}: SMPL must be {SMPL_DIM} finite numbers (72 pose, 10 betas, 3 camera), "
                             f"got shape {smpl.shape}")
    if person.mask.shape != tuple(image_size):
        raise ConditionError(f"{source}: person mask is {person.mask.shape}, expected the image size {tuple(image_size)}")
    if not person.mask.any():
        raise ConditionError(f"{source}: the person mask is empty (the SMPL camera puts the body outside the image?)")
    for part in (*person.style_images, *person.style_texts):
        check_part(part, source)
    for part, crop in person.style_images.items():
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise ConditionError(f"{source}: style image of {part!r} must be uint8 (S, S, 3), got {crop.dtype} {crop.shape}")


def read_image(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """An RGB image file (jpg/png/...) as uint8 (H, W, 3) at `size`."""
    try:
        return open_rgb(pathlib.Path(path), tuple(size), Image.Resampling.LANCZOS)
    except BadExampleError as error:
        raise ConditionError(str(error)) from None


def read_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """A person-mask image (non-zero inside) as bool (H, W) at `size`."""
    try:
        return open_mask(pathlib.Path(path), tuple(size))[..., 0] > 0
    except BadExampleError as error:
        raise ConditionError(str(error)) from None


def read_style_folder(folder: str | os.PathLike, style_size: int) -> dict[str, np.ndarray]:
    """{part: crop} of a style folder in the original layout (`<part>.jpg`; absent parts left out)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ConditionError(f"style folder {folder} does not exist (expected <part>.jpg files, parts: "
                             f"{', '.join(STYLE_PARTS)})")
    try:
        crops, present = load_style_folder(folder, style_size)
    except BadExampleError as error:
        raise ConditionError(str(error)) from None
    if not present.any():
        raise ConditionError(f"style folder {folder} holds none of {', '.join(p + '.jpg' for p in STYLE_PARTS)}")
    return {part: crops[index] for index, part in enumerate(STYLE_PARTS) if present[index]}


def read_smpl(spec: Any, source: str = "smpl") -> np.ndarray:
    """(85,) float32 from a FrankMocap pickle (.p/.pkl, restricted unpickler), an .npz (key `smpl`,
    as `python -m upgpt_jax.smpl to-npz` writes), a .json (a list, or {"smpl": list}), a .npy,
    or a sequence of 85 numbers."""
    if isinstance(spec, (str, os.PathLike)):
        path = pathlib.Path(spec)
        if not path.is_file():
            raise ConditionError(f"{source}: SMPL file {path} does not exist")
        try:
            if path.suffix in _PICKLE_SUFFIXES:
                vector = load_smpl_vector(path)
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    if "smpl" not in archive:
                        raise ConditionError(f"{source}: {path} has no 'smpl' array (it has {sorted(archive)})")
                    vector = archive["smpl"]
            elif path.suffix == ".npy":
                vector = np.load(path, allow_pickle=False)
            elif path.suffix == ".json":
                content = json.loads(path.read_text())
                vector = content["smpl"] if isinstance(content, dict) else content
            else:
                raise ConditionError(f"{source}: {path}: unknown SMPL file type; expected .p/.pkl (FrankMocap), "
                                     ".npz, .npy or .json")
        except (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as error:
            if isinstance(error, ConditionError):
                raise
            raise ConditionError(f"{source}: cannot read SMPL from {path} ({error})") from None
        source = f"{source} ({path})"
    else:
        vector = spec
    try:
        vector = np.asarray(vector, np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ConditionError(f"{source}: SMPL must be {SMPL_DIM} numbers") from None
    if vector.shape != (SMPL_DIM,) or not np.all(np.isfinite(vector)):
        raise ConditionError(f"{source}: SMPL must be {SMPL_DIM} finite numbers (72 pose, 10 betas, 3 camera), "
                             f"got {vector.size}")
    return vector


_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


def read_smpl_mesh(spec: Any, source: str = "smpl") -> tuple[np.ndarray, np.ndarray] | None:
    """(pred_vertices_img (V, 2 or 3) pixels, faces (F, 3)) of a FrankMocap pickle (restricted
    unpickler) or of the .npz `python -m upgpt_jax.smpl to-npz` wrote from one; None for any other
    SMPL spec or a file without them. Read after `read_smpl` accepted `spec`."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    path = pathlib.Path(spec)
    try:
        if path.suffix in _PICKLE_SUFFIXES:
            arrays = load_frankmocap_pickle(path)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in ("pred_vertices_img", "faces") if key in archive}
        else:
            return None
    except (OSError, ValueError, pickle.UnpicklingError) as error:
        raise ConditionError(f"{source}: cannot read SMPL from {path} ({error})") from None
    if "pred_vertices_img" not in arrays or "faces" not in arrays:
        return None
    vertices, faces = np.asarray(arrays["pred_vertices_img"]), np.asarray(arrays["faces"])
    if (vertices.ndim != 2 or vertices.shape[1] not in (2, 3) or not np.issubdtype(vertices.dtype, np.number)
            or faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer)):
        raise ConditionError(f"{source}: {path}: pred_vertices_img must be (V, 3) numbers and faces (F, 3) "
                             f"integers, got {vertices.shape} {vertices.dtype} and {faces.shape} {faces.dtype}")
    return vertices, faces


def parse_style_assignments(items: Sequence[str], style_size: int, source: str = "style") -> tuple[
        dict[str, np.ndarray], dict[str, str]]:
    """`part=path/to/crop.jpg` (a style image) or `part=text:red striped shirt` (a style text)."""
    images, texts = {}, {}
    for item in items:
        part, separator, value = item.partition("=")
        if not separator or not value:
            raise ConditionError(f"{source}: {item!r} is not part=image.jpg or part=text:words")
        part = check_part(part.strip(), source)
        if value.startswith("text:"):
            texts[part] = value[len("text:"):].strip()
            if not texts[part]:  # the original's app reads an empty style text as "no text" (mix_style)
                raise ConditionError(f"{source}: {item!r} gives no words after 'text:'")
        else:
            images[part] = read_image(value, (style_size, style_size))
    return images, texts


def person_from_record(record: Mapping[str, Any], side: str = "target", source: str = "example") -> Person:
    """A stored pair record (data.schema) as a Person: `side` "target" is the record's target
    (text, SMPL, mask) drawn in the source's clothes, as in training; "source" is the source
    person as the source image shows them (its own SMPL; mask unknown, so none)."""
    text = record["text"].decode() if isinstance(record["text"], bytes) else str(record["text"])
    present = np.asarray(record["style_present"], bool)
    styles = {part: np.asarray(record["styles"][index]) for index, part in enumerate(STYLE_PARTS) if present[index]}
    if side == "target":
        smpl, mask = record["smpl"], np.asarray(record["mask"])[..., 0] > 0
    else:
        smpl, mask = record["source_smpl"], np.zeros(np.asarray(record["mask"]).shape[:2], bool)
    record_id = record["id"].decode() if isinstance(record.get("id"), bytes) else str(record.get("id", ""))
    return Person(text=text, smpl=np.asarray(smpl, np.float32), mask=mask, style_images=styles,
                  origin=dict(source=source, record_id=record_id, side=side))
