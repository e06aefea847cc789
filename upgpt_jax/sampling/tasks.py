"""The four tasks of UPGPT as requests -> `Job`s (people to sample, seeds, reference images).

A request is a dict (a JSONL line, or sample.py's flags); every key is optional, and what is not
given comes from the run's dataset (test split: identities unseen in training):

- generate: text, smpl, mask, styles ["part=image.jpg" | "part=text:words" | "part=example:K"],
  style_folder, example K (default conditions), num (samples), seed.
- pose_transfer: source example K or (style_folder + text) for the appearance; target_smpl
  (file, 85 numbers, or "example:K" / "example:K:source") and target mask; the ground truth is
  shown beside the samples when the target is a dataset example.
- edit: the person of example K (or style_folder + text + smpl), `edits` ["top=text:red striped
  shirt", "top=other_top.jpg", "top=example:K", "content=a woman in a red striped shirt"]: those
  parts change, the rest is kept; the unedited sample with the same seed is produced beside it.
  As in the original's app, a text edit puts the style text's CLIP text features in that part's
  style slot and leaves the content text alone (app.py:262-268, InferenceModel.mix_style in
  ldm/data/generate_utils.py:172-190): the app's content text is a box of its own, which
  `content=words` is for the edited sample (else it keeps the person's text, whatever it says).
  The original redraws the whole person from the edited conditions (sampling edit_region "whole");
  by default (`inferred`) the edit is confined to the region the model says it acts on
  (Sampler.edit, diffusion.editing), written beside the samples as edit_region_000.png.
- interpolate: start_smpl/end_smpl (default: example K's source and target poses), frames N,
  interpolation "linear" (the original) or "slerp"; every frame uses the same noise and its own
  rendered person mask.

Person masks (samples.json `mask`): the request's `mask` file ("file"); else, for a FrankMocap
pickle (or its to-npz .npz), its own projected mesh ("frankmocap_vertices"); else the SMPL
vector's silhouette through smplx with SMPL model files ("smplx") or the mannequin's ("mannequin");
dataset examples bring theirs ("dataset").
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from upgpt_jax.sampling.conditions import (
    ConditionError, Person, check_part, parse_style_assignments, read_mask, read_smpl, read_smpl_mesh, read_style_folder)
from upgpt_jax.sampling.sources import DatasetExamples, mesh_mask, silhouette, silhouette_kind
from upgpt_jax.smpl.interpolate import METHODS, interpolate_smpl

TASKS = ("generate", "pose_transfer", "edit", "interpolate")
_KEYS = {
    "generate": {"text", "smpl", "mask", "styles", "style_folder", "example", "num", "seed"},
    "pose_transfer": {"example", "style_folder", "text", "source_smpl", "target_smpl", "mask", "num", "seed"},
    "edit": {"example", "style_folder", "text", "smpl", "mask", "edits", "seed"},
    "interpolate": {"example", "style_folder", "text", "start_smpl", "end_smpl", "frames", "interpolation", "seed"},
}
_COMMON = {"task", "name"}
CONTENT_EDIT = "content"  # edit: "content=words" replaces the edited sample's content text


@dataclasses.dataclass
class Job:
    """One request's samples: people[i] from noise seed seeds[i], labelled labels[i]."""

    name: str
    task: str
    people: list[Person]
    seeds: list[int]
    labels: list[str]
    references: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # shown beside the samples
    request: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Inputs the planner chose because the request left them out (e.g. interpolation's poses), so the
    # user reads which were used: sample.py prints them and samples.json records them.
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


class TaskContext:
    """What the planners need: the run's config, its dataset (lazily, or `examples` already open,
    e.g. the eval's test pairs with their records cached) and SMPL model files."""

    def __init__(self, config: Any, smpl_model_dir: str | None = None, examples: DatasetExamples | None = None):
        self.config = config
        self.image_size = tuple(config.model.image_size)
        self.style_size = int(config.model.clip.image_size)
        self.smpl_model_dir = smpl_model_dir
        self._examples = examples

    @property
    def examples(self) -> DatasetExamples:
        if self._examples is None:
            self._examples = DatasetExamples(self.config)
        return self._examples

    def smpl(self, spec: Any, source: str) -> np.ndarray:
        """An SMPL spec, or "example:K" (that example's target pose) / "example:K:source"."""
        if isinstance(spec, str) and spec.startswith("example:"):
            index, side = _example_ref(spec, source)
            return self.examples.person(index, side).smpl
        return read_smpl(spec, source)

    def mask(self, request: Mapping[str, Any], smpl: np.ndarray, mannequin: int | None) -> np.ndarray:
        if request.get("mask"):
            return read_mask(request["mask"], self.image_size)
        return silhouette(smpl, self.image_size, mannequin, self.smpl_model_dir)

    def pose(self, spec: Any, request: Mapping[str, Any], mannequin: int | None, source: str
             ) -> tuple[np.ndarray, np.ndarray, str]:
        """(SMPL vector, person mask, how the mask was made) of an SMPL spec: the request's `mask`
        file, else the mesh of a FrankMocap file (its fit to the photo, far closer to the
        original's masks than any silhouette of the 85 numbers), else `mask()`'s silhouette."""
        smpl = self.smpl(spec, source)
        if request.get("mask"):
            return smpl, read_mask(request["mask"], self.image_size), "file"
        mesh = None if isinstance(spec, str) and spec.startswith("example:") else read_smpl_mesh(spec, source)
        if mesh is not None:
            return smpl, mesh_mask(*mesh, self.image_size, f"{source}: {spec}"), "frankmocap_vertices"
        return smpl, self.mask({}, smpl, mannequin), silhouette_kind(self.smpl_model_dir)

    def styles(self, assignments: list[str], source: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Parsed style assignments; "part=example:K" takes part K's crop of a dataset example."""
        own, borrowed = [], {}
        for item in assignments:
            part, _, value = item.partition("=")
            if value.startswith("example:"):
                index, _ = _example_ref(value, source)
                donor = self.examples.person(index)
                part = check_part(part.strip(), source)
                if part not in donor.style_images:
                    raise ConditionError(f"{source}: example {index} has no {part!r} crop")
                borrowed[part] = donor.style_images[part]
            else:
                own.append(item)
        images, texts = parse_style_assignments(own, self.style_size, source)
        return {**images, **borrowed}, texts

    def appearance(self, request: Mapping[str, Any], source: str, default_example: int = 0) -> tuple[Person, int | None]:
        """(the person whose look a task keeps, its example index or None): a style folder + text
        (+ smpl), or dataset example `example`."""
        if request.get("style_folder"):
            if not request.get("text"):
                raise ConditionError(f"{source}: a style_folder needs a content 'text' too")
            smpl, mask, mask_kind = self.pose(
                request.get("smpl") or request.get("source_smpl") or _required(request, "smpl", source),
                request, None, source)
            person = Person(text=str(request["text"]), smpl=smpl, mask=mask,
                            style_images=read_style_folder(request["style_folder"], self.style_size),
                            origin=dict(source=source, style_folder=str(request["style_folder"]), mask=mask_kind))
            return person, None
        index = _integer(request, "example", default_example, source, minimum=0)
        person = self.examples.person(index)
        if request.get("text"):
            person.text = str(request["text"])
        return person, index


def plan(context: TaskContext, request: Mapping[str, Any], index: int = 0) -> Job:
    """The `Job` of one request; unknown tasks or keys are refused before any compute."""
    task = request.get("task")
    name = str(request.get("name") or f"{index:03d}_{task}")
    # The name becomes the output folder OUT/<name>/: one plain path component, never outside OUT.
    if name in (".", "..") or any(separator in name for separator in ("/", "\\", "\0")):
        raise ConditionError(f"request name {name!r}: it names the output folder OUT/<name>/, so it must be one "
                             "folder name (no '/', '\\', '.' or '..')")
    if task not in TASKS:
        raise ConditionError(f"request {name}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    unknown = set(request) - _KEYS[task] - _COMMON
    if unknown:
        raise ConditionError(f"request {name}: unknown keys {sorted(unknown)} for task {task}; "
                             f"expected some of {sorted(_KEYS[task])}")
    job = _PLANNERS[task](context, dict(request), name, _integer(request, "seed", 0, name))
    job.request = dict(request)
    return job


def _generate(context: TaskContext, request: dict, name: str, seed: int) -> Job:
    num = _integer(request, "num", 4, name, minimum=1)
    explicit = any(request.get(key) for key in ("text", "smpl", "styles", "style_folder"))
    if explicit:
        smpl, mask, mask_kind = context.pose(_required(request, "smpl", name), request, None, name)
        images, texts = context.styles(list(request.get("styles", [])), name)
        if request.get("style_folder"):
            images = {**read_style_folder(request["style_folder"], context.style_size), **images}
        person = Person(text=str(_required(request, "text", name)), smpl=smpl, mask=mask,
                        style_images=images, style_texts=texts, origin=dict(source=name, mask=mask_kind))
        return Job(name, "generate", [person] * num, [seed + i for i in range(num)], [f"seed {seed + i}" for i in range(num)])
    # From the dataset: example K's text, pose and mask, no style (text + pose generation).
    start = _integer(request, "example", 0, name, minimum=0)
    people = [dataclasses.replace(context.examples.person(start + i), style_images={}) for i in range(num)]
    references = {"ground truth": np.stack([context.examples.image(start + i) for i in range(num)])}
    return Job(name, "generate", people, [seed] * num, [f"example {start + i}" for i in range(num)], references)


def _pose_transfer(context: TaskContext, request: dict, name: str, seed: int) -> Job:
    num = _integer(request, "num", 1, name, minimum=1)
    source, example = context.appearance(request, name)
    if request.get("target_smpl"):
        target, mask, mask_kind = context.pose(request["target_smpl"], request, _mannequin(context, example), name)
        person = dataclasses.replace(source, smpl=target, mask=mask, origin={**source.origin, "mask": mask_kind})
        references = {}
    else:  # the pair's own target: ground truth known
        if example is None:
            raise ConditionError(f"{name}: pose_transfer needs a target_smpl")
        person = context.examples.person(example)
        references = {"ground truth": context.examples.image(example)[None]}
    if example is not None:
        references = {"source": context.examples.image(example, "source")[None], **references}
    return Job(name, "pose_transfer", [person] * num, [seed + i for i in range(num)],
               [f"seed {seed + i}" for i in range(num)], references)


def _edit(context: TaskContext, request: dict, name: str, seed: int) -> Job:
    person, example = context.appearance(request, name)
    edits = list(request.get("edits") or [f"top=example:{(example or 0) + 1}"])
    content = [value.strip() for part, _, value in (item.partition("=") for item in edits) if part.strip() == CONTENT_EDIT]
    if len(content) > 1 or (content and not content[0]):
        raise ConditionError(f"{name}: give the edited content text once, as {CONTENT_EDIT}=words")
    images, texts = context.styles([item for item in edits if item.partition("=")[0].strip() != CONTENT_EDIT], name)
    edited = person.with_styles(images, texts)
    if content:
        edited.text = content[0]
    edited.origin = {**person.origin, "edits": edits}
    references = {"source": context.examples.image(example, "source")[None]} if example is not None else {}
    return Job(name, "edit", [person, edited], [seed, seed], ["unedited", "edited: " + "; ".join(edits)], references)


def _interpolate(context: TaskContext, request: dict, name: str, seed: int) -> Job:
    frames = _integer(request, "frames", 8, name, minimum=2)
    method = request.get("interpolation", "slerp")
    if method not in METHODS:
        raise ConditionError(f"{name}: interpolation must be one of {METHODS}, got {method!r}")
    person, example = context.appearance(request, name)
    default_example = f"example:{example or 0}"
    defaults = {"start_smpl": (f"{default_example}:source", f"test example {example or 0}'s source pose"),
                "end_smpl": (default_example, f"test example {example or 0}'s target pose")}
    notes = {key: f"{spec} ({meaning}: no {key} given)" for key, (spec, meaning) in defaults.items()
             if not request.get(key)}
    start, end = (context.smpl(request.get(key) or defaults[key][0], name) for key in ("start_smpl", "end_smpl"))
    poses = interpolate_smpl(start, end, frames, method)
    mannequin = _mannequin(context, example)
    origin = {**person.origin, "mask": silhouette_kind(context.smpl_model_dir)}
    people = [dataclasses.replace(person, smpl=pose.astype(np.float32), mask=context.mask({}, pose, mannequin),
                                  origin=origin) for pose in poses]
    return Job(name, "interpolate", people, [seed] * frames, [f"frame {i}" for i in range(frames)], notes=notes)


def _mannequin(context: TaskContext, example: int | None) -> int | None:
    return None if example is None else context.examples.mannequin(example)


def _integer(request: Mapping[str, Any], key: str, default: int, source: str, minimum: int | None = None) -> int:
    """`request[key]` (or `default`) as an int of at least `minimum`; ConditionError naming the key if not."""
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise ConditionError(f"{source}: {key!r} must be an integer, got {value!r}")
    if minimum is not None and int(value) < minimum:
        raise ConditionError(f"{source}: {key!r} must be >= {minimum}, got {value!r}")
    return int(value)


def _required(request: Mapping[str, Any], key: str, source: str) -> Any:
    if not request.get(key):
        raise ConditionError(f"{source}: missing {key!r}")
    return request[key]


def _example_ref(spec: str, source: str) -> tuple[int, str]:
    parts = spec.split(":")
    try:
        index = int(parts[1])
    except (IndexError, ValueError):
        raise ConditionError(f"{source}: {spec!r} is not example:K or example:K:source") from None
    side = parts[2] if len(parts) > 2 else "target"
    if side not in ("target", "source") or len(parts) > 3:
        raise ConditionError(f"{source}: {spec!r} is not example:K or example:K:source")
    return index, side


_PLANNERS = {"generate": _generate, "pose_transfer": _pose_transfer, "edit": _edit, "interpolate": _interpolate}
