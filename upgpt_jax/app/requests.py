"""Page inputs -> the request dicts that sample.py reads from JSONL (see sampling/tasks.py).

The app builds requests and lets the sampling package check them, so a bad input in the page gets the very
message sample.py prints for it. Uploads arrive as local file paths: crops and SMPL files are
passed by path, as a JSONL request would name them.
"""
from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any


def whole_number(value: Any, field: str) -> int:
    """A page number field as an int (an emptied field arrives as None)."""
    if value is None or value == "" or float(value) != int(float(value)):
        from upgpt_jax.sampling import ConditionError

        raise ConditionError(f"{field}: expected a whole number, got {value!r}")
    return int(float(value))


def real_number(value: Any, field: str) -> float:
    """A page number field as a float (an emptied field arrives as None)."""
    if value is None or value == "":
        from upgpt_jax.sampling import ConditionError

        raise ConditionError(f"{field}: expected a number, got {value!r}")
    return float(value)


def pose_spec(choice: str | None, upload: str | None, gallery: Mapping[str, Any], field: str) -> Any:
    """The SMPL spec of a pose picker: the uploaded file if any, else the gallery pose `choice`."""
    if upload:
        return str(upload)
    if choice in gallery:
        return gallery[choice]
    from upgpt_jax.sampling import ConditionError

    raise ConditionError(f"{field}: pick a pose from the gallery or upload an SMPL file "
                         "(.p/.pkl FrankMocap, .npz, .npy, .json)")


def style_assignment(part: str, crop: str | None, text: str | None, example: str | None) -> str | None:
    """One part's style as sample.py's `--style`/`--edit` value (crop, else text, else a dataset
    example's crop; sampling checks each), or None when the part is left empty."""
    if crop:
        return f"{part}={crop}"
    if text and text.strip():
        return f"{part}=text:{text.strip()}"
    if example and example.strip():
        return f"{part}=example:{example.strip()}"
    return None


def style_assignments(parts: Mapping[str, tuple[str | None, str | None, str | None]]) -> list[str]:
    """`style_assignment` of every part that has a style."""
    items = [style_assignment(part, *values) for part, values in parts.items()]
    return [item for item in items if item]


def style_folder(uploads: Sequence[str]) -> str:
    """A style folder in the original layout (<part>.jpg) from uploaded crops named by their part
    (top.png, hair.jpg, ...): the files are copied unchanged, the readers identify images by content."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="upgpt_styles_"))
    for upload in uploads:
        shutil.copyfile(upload, folder / (pathlib.Path(upload).stem + ".jpg"))
    return str(folder)


def generate_request(text: str, smpl: Any, styles: list[str], num: int, seed: int) -> dict[str, Any]:
    return {"task": "generate", "text": text, "smpl": smpl, "styles": styles, "num": whole_number(num, "samples"),
            "seed": whole_number(seed, "seed")}


def pose_transfer_request(example: Any, crops: Sequence[str] | None, text: str, target_smpl: Any,
                          seed: int) -> dict[str, Any]:
    """Example `example`'s look, or uploaded crops + `text`, in the target pose (one sample)."""
    request: dict[str, Any] = {"task": "pose_transfer", "target_smpl": target_smpl, "seed": whole_number(seed, "seed")}
    if crops:  # the source pose is not drawn (the target replaces it) but a style folder needs one
        request.update(style_folder=style_folder(crops), text=text, source_smpl=target_smpl)
    else:
        request["example"] = whole_number(example, "example")
        if text:
            request["text"] = text
    return request


def edit_request(example: Any, part: str, text: str | None, crop: str | None, donor: str | None,
                 seed: int) -> dict[str, Any]:
    """Example `example` with `part` restyled by a crop, a text or another example's crop."""
    edit = style_assignment(str(part).strip(), crop, text, donor)
    if edit is None:
        from upgpt_jax.sampling import ConditionError

        raise ConditionError(f"edit: give {part!r} a new style: an image, a text or an example")
    return {"task": "edit", "example": whole_number(example, "example"), "edits": [edit],
            "seed": whole_number(seed, "seed")}


def interpolate_request(example: Any, start_smpl: Any, end_smpl: Any, frames: int, method: str,
                        seed: int) -> dict[str, Any]:
    return {"task": "interpolate", "example": whole_number(example, "example"), "start_smpl": start_smpl,
            "end_smpl": end_smpl, "frames": whole_number(frames, "frames"), "interpolation": method,
            "seed": whole_number(seed, "seed")}
