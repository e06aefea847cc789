"""The `synthetic` protocol: does each condition steer the images? Measured on held-out identities.

The embedded dataset is rendered, so for every test pair (identities never seen in training) the
protocol knows the exact target image, the person mask and where each garment lies, and which
colour the text and the style crops asked for. It samples the pairs' targets four ways, with the
same noise seeds:

- `pose_transfer`: all conditions (the source's style crops, the text, the target pose and mask):
  SSIM/PSNR (+LPIPS with --lpips_dir) against the rendered ground truth;
- `text_pose`: style dropped (its null embeddings), so only the text names the colours;
- `style_pose`: text dropped, so only the style crops show them;
- `text_style`: the target pose withheld: its SMPL token dropped and the person mask (an input
  channel the model always has) drawn for the source's pose, so the silhouette IoU against the
  target shows how much the requested pose steers the person (denoiser/pose_dropped measures the
  token alone).

Each gets the silhouette IoU of the generated person against the target mask and the part colour
accuracy against the requested colours (upgpt_jax/eval/synthetic.py), overall and per part
(`colour_accuracy/hair`, `/top`, `/bottom`, `/shoes`: small parts are the first to fail).
`denoiser/*` (with the ablations) measures the same question where the samples cannot yet show
it: how much the denoiser's noise error on the true targets grows without each condition
(upgpt_jax/eval/denoiser.py).
`autoencoder/*` scores the VAE's reconstructions of the targets (posterior mode, decoded) the same
way: the ceiling of every sample metric, since a sample is a decoded latent too; a sample metric
near its ceiling is limited by the VAE, not by the diffusion model. `interpolation` samples a few
pairs' source-to-target pose sweeps with one seed and scores identity consistency across the
frames. `edit_success` (with `edit/part_hit`, `edit/others_kept`) recolours one garment of each
pair by a text edit (style text and content text), as the `edit` task does, sampled with the
pose_transfer seed: does the part take the requested colour while the other parts keep theirs
(upgpt_jax/eval/edit_success.py)?
The worst cases (lowest pose-transfer SSIM) go to worst.png, the reconstruction beside the
ground truth, the edited sample last.

`synthetic_colour_free` is the same protocol with content texts that name no colours
(data.synthetic.describe_colour_free: "a woman with long hair in a striped short-sleeve top,
trousers and shoes") in every sample, so the colours can only come from the style crops; colour
accuracy is still scored against the identity's colours. A model trained with
data.colour_free_text_fraction > 0 has seen such texts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from upgpt_jax.eval.denoiser import denoiser_sensitivity
from upgpt_jax.eval.edit_success import edit_scores, sample_edits
from upgpt_jax.eval.protocols import EvalOptions, EvalResult, ProtocolError, load_model, register, sampling_settings
from upgpt_jax.eval.synthetic import (
    SCORED_PARTS, TargetLayout, identity_consistency, part_colour_accuracy, pose_transfer_scores, silhouette_iou,
    target_layout)
from upgpt_jax.phases import phase

DEFAULT_NUM_EXAMPLES = 64
INTERPOLATION_PAIRS = 4
INTERPOLATION_FRAMES = 8
WORST_CASES = 8
# Variant name -> (conditions replaced by their null embeddings, whose pose the person mask shows).
VARIANTS = {"pose_transfer": ((), "target"), "text_pose": (("style",), "target"), "style_pose": (("text",), "target"),
            "text_style": (("pose",), "source")}


@register("synthetic")
def evaluate_synthetic(options: EvalOptions) -> EvalResult:
    return _evaluate(options, "synthetic", colour_free=False)


@register("synthetic_colour_free")
def evaluate_synthetic_colour_free(options: EvalOptions) -> EvalResult:
    return _evaluate(options, "synthetic_colour_free", colour_free=True)


def _evaluate(options: EvalOptions, protocol: str, colour_free: bool) -> EvalResult:
    """The protocol; `colour_free`: every person's content text is the colour-free one."""
    if options.samples_dir:
        raise ProtocolError(f"--protocol={protocol} samples its own images from the model: drop --samples_dir")
    if options.workdir and _is_vae_stage_run(options):
        return _evaluate_autoencoder(options, protocol)
    with phase("load the model"):
        loaded = load_model(options)
    config = loaded.config
    from upgpt_jax.sampling import Sampler, TaskContext

    targets = _Targets.of(config, options.num_examples, protocol, colour_free)
    examples, people, truth = targets.examples, targets.people, targets.truth
    count, image_size = len(people), tuple(config.model.image_size)
    seeds = [options.seed + index for index in range(count)]
    settings = sampling_settings(loaded, options)
    mesh, rules = loaded.mesh, config.axis_rules
    lpips = _lpips(options.lpips_dir, mesh, rules)

    metrics: dict[str, float] = {}
    per_example: dict[str, list[float]] = {}
    samples: dict[str, np.ndarray] = {}
    variants = VARIANTS if options.ablations else {"pose_transfer": VARIANTS["pose_transfer"]}
    samplers = {variant: Sampler(loaded, dataclasses.replace(settings, dropped=dropped))
                for variant, (dropped, _) in variants.items()}
    for variant, sampler in samplers.items():
        drawn, colour_layouts = people, None
        if variants[variant][1] == "source":  # colours are read where the person is drawn; IoU etc. vs the target
            drawn = [dataclasses.replace(person, mask=examples.person(index, "source").mask)
                     for index, person in enumerate(people)]
            colour_layouts = [_layout(examples.record(index), image_size, "source") for index in range(count)]
        samples[variant] = sampler(drawn, seeds, progress=True, label=f"sample {variant}")
        with phase(f"score {variant} (SSIM/PSNR{'/LPIPS' if lpips else ''}, silhouette IoU, colours)"):
            _add_scores(variant, _scores(samples[variant], targets, lpips, colour_layouts), metrics, per_example)

    with phase(f"autoencoder: reconstruct and score the {count} targets"):
        reconstructions = vae_reconstructions(loaded.model, loaded.params, truth, settings.batch_size, mesh, rules)
        _add_scores("autoencoder", _scores(reconstructions, targets, lpips), metrics, per_example)

    if options.ablations:
        with phase("denoiser sensitivity: noise error without each condition"):
            sensitivity = denoiser_sensitivity(loaded, people, truth, options.seed, settings.batch_size)
        metrics.update({f"denoiser/{name}": value for name, value in sensitivity.items()})

    identities = [_identity(examples.record(index)) for index in range(count)]
    unedited, edited, edits = sample_edits(samplers["pose_transfer"], TaskContext(config, examples=examples), people,
                                           identities, targets.layouts, samples["pose_transfer"], seeds, options.seed,
                                           targets.content_text)
    with phase("score edit (part hit, others kept)"):
        for name, values in edit_scores(edited, unedited, targets.layouts, edits).items():
            per_example[name] = [float(value) for value in values]
            metrics[name] = float(_scored_mean(values))

    pairs = min(INTERPOLATION_PAIRS, count)
    with phase(f"interpolation: {pairs} pose sweeps of {INTERPOLATION_FRAMES} frames, identity consistency"):
        consistency = _interpolation(samplers["pose_transfer"], targets, pairs, image_size, options.seed)
    metrics.update({f"interpolation/{name}": value for name, value in consistency.items()})

    worst = np.argsort(per_example["pose_transfer/ssim"])[:WORST_CASES]
    rows = [(_worst_label(index, "pose_transfer", per_example),
             [examples.image(index, "source"), truth[index], reconstructions[index]]
             + [samples[variant][index] for variant in samples] + [edited[index]])
            for index in worst]
    columns = ["source", "ground truth", "autoencoder"] + list(samples) + ["edit"]
    details = {
        "num_examples": count, "split": "test", "seeds": [seeds[0], seeds[-1]],
        "texts": "colour-free (data.synthetic.describe_colour_free)" if colour_free else "the dataset's",
        "edits": [edit.assignments if edit else None for edit in edits],
        "columns of worst.png": columns,
        "variants": {variant: {"dropped": list(dropped), "person_mask": f"{mask} pose"}
                     for variant, (dropped, mask) in variants.items()},
        "sampling": dataclasses.asdict(settings), "model": loaded.source,
        "lpips": "computed ([-1, 1] inputs)" if lpips else "skipped: no --lpips_dir",
        "interpolation": {"pairs": min(INTERPOLATION_PAIRS, count), "frames": INTERPOLATION_FRAMES,
                          "method": "slerp"},
    }
    return EvalResult(protocol, metrics, per_example, rows, details, columns)


def _worst_label(index: int, group: str, per_example: dict[str, list[float]]) -> str:
    """worst.png's row label: the test example and the score that put it there."""
    return f"example {index}\n{group}\nSSIM {per_example[f'{group}/ssim'][index]:.2f}"


@dataclasses.dataclass(frozen=True)
class _Targets:
    """The first test pairs of the run's synthetic dataset: whom to sample, and what to compare with."""

    examples: Any  # sampling.sources.DatasetExamples of the test split
    people: list[Any]
    truth: np.ndarray  # uint8 (N, H, W, 3) target images
    layouts: list[TargetLayout]
    masks: np.ndarray  # the targets' person masks
    content_text: Callable[[Any], str]  # an Identity's content text: describe, or describe_colour_free

    @classmethod
    def of(cls, config: Any, num_examples: int | None, protocol: str = "synthetic",
           colour_free: bool = False) -> _Targets:
        if config.data.dataset != "synthetic_people":
            raise ProtocolError(f"--protocol={protocol} needs a model trained on synthetic_people; this run's "
                                f"dataset is {config.data.dataset!r}")
        from upgpt_jax.data.synthetic import describe, describe_colour_free
        from upgpt_jax.sampling.sources import DatasetExamples

        examples = DatasetExamples(config, "test")
        count = min(num_examples or DEFAULT_NUM_EXAMPLES, len(examples))
        people = [examples.person(index) for index in range(count)]
        if colour_free:
            people = [dataclasses.replace(person, text=describe_colour_free(_identity(examples.record(index))))
                      for index, person in enumerate(people)]
        return cls(examples=examples, people=people,
                   truth=np.stack([examples.image(index) for index in range(count)]),
                   layouts=[_layout(examples.record(index), tuple(config.model.image_size)) for index in range(count)],
                   masks=np.stack([person.mask for person in people]),
                   content_text=describe_colour_free if colour_free else describe)


def _is_vae_stage_run(options: EvalOptions) -> bool:
    from upgpt_jax.rundir.restore import run_config

    return run_config(options.workdir, options.step)[0].train.stage == "vae"


def _evaluate_autoencoder(options: EvalOptions, protocol: str) -> EvalResult:
    """A VAE-stage run: autoencoder/* alone (its reconstructions of the test targets, scored as
    samples), i.e. the ceiling a diffusion stage trained on this VAE can reach."""
    from upgpt_jax.models.upgpt import build_model
    from upgpt_jax.rundir.restore import restore_params, run_config
    from upgpt_jax.sharding import make_mesh

    config, step = run_config(options.workdir, options.step)
    targets = _Targets.of(config, options.num_examples, protocol)
    mesh, rules = make_mesh(config.mesh, None, config.get("mesh_dcn")), config.axis_rules
    params = restore_params(options.workdir, config, step, options.weights, mesh)
    batch_size = options.batch_size or int(config.sampling.batch_size)
    reconstructions = vae_reconstructions(build_model(config.model), params, targets.truth, batch_size, mesh, rules)
    metrics: dict[str, float] = {}
    per_example: dict[str, list[float]] = {}
    lpips = _lpips(options.lpips_dir, mesh, rules)
    _add_scores("autoencoder", _scores(reconstructions, targets, lpips), metrics, per_example)
    worst = np.argsort(per_example["autoencoder/ssim"])[:WORST_CASES]
    rows = [(_worst_label(index, "autoencoder", per_example), [targets.truth[index], reconstructions[index]])
            for index in worst]
    columns = ["ground truth", "autoencoder"]
    details = {"num_examples": len(targets.people), "split": "test", "columns of worst.png": columns,
               "model": {"workdir": str(options.workdir), "step": step, "weights": options.weights, "stage": "vae"}}
    return EvalResult(protocol, metrics, per_example, rows, details, columns)


def _add_scores(group: str, scores: dict[str, np.ndarray], metrics: dict[str, float],
                per_example: dict[str, list[float]]) -> None:
    for name, values in scores.items():
        values = np.asarray(values, np.float64)
        per_example[f"{group}/{name}"] = [float(value) for value in values]
        metrics[f"{group}/{name}"] = float(_scored_mean(values))


def _scored_mean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The mean of the non-nan values (nan marks a part the pose hides), nan where none was scored."""
    scored = ~np.isnan(values)
    return np.where(scored.any(axis), np.nansum(values, axis) / np.maximum(scored.sum(axis), 1), np.nan)


def vae_reconstructions(model: Any, params: Any, images: np.ndarray, batch_size: int, mesh: Any = None,
                        rules: Any = None) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> the VAE reconstructions (uint8) of `model` (UPGPT) with `params`
    (holding "vae"): the posterior mode decoded, in batches of `batch_size` (the last one padded),
    batch-sharded on `mesh` by `rules` (eval.placement.eval_mesh's defaults)."""
    import jax

    from upgpt_jax.eval.placement import eval_mesh, padded_size, place_batch
    from upgpt_jax.sampling.sampler import to_uint8
    from upgpt_jax.sharding import on_mesh

    def reconstruct(module: Any, x: Any) -> Any:
        return module.decode(module.encode(x))

    mesh, rules = eval_mesh(mesh, rules)
    size = padded_size(batch_size, mesh, rules)
    run = jax.jit(on_mesh(lambda weights, x: to_uint8(model.apply({"params": weights}, x, method=reconstruct)),
                          mesh, rules))
    batches = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start:start + batch_size], np.float32) / 127.5 - 1.0
        batches.append(np.asarray(run(params, place_batch({"x": chunk}, size, mesh, rules)["x"]))[:len(chunk)])
    return np.concatenate(batches)


def _identity(record: dict[str, Any]) -> Any:
    """The synthetic Identity of a pair record."""
    from upgpt_jax.data.synthetic import identity_from_id

    return identity_from_id(int(record["identity"]))


def _layout(record: dict[str, Any], image_size: tuple[int, int], side: str = "target") -> TargetLayout:
    """Where the parts of the pair's person lie in its target (or source) pose."""
    smpl = record["smpl" if side == "target" else "source_smpl"]
    return target_layout(_identity(record), np.asarray(smpl), image_size)


def _scores(images: np.ndarray, targets: _Targets, lpips: Any,
            colour_layouts: Sequence[TargetLayout] | None = None) -> dict[str, np.ndarray]:
    """Per-image scores of images generated (or reconstructed) for `targets`; colours are read
    where `colour_layouts` (default: the targets') place the parts."""
    layouts = targets.layouts if colour_layouts is None else colour_layouts
    colours = part_colour_accuracy(images, layouts)
    # Per image and part: 1.0 right colour, 0.0 wrong, nan where the pose hides the part.
    by_part = {part: np.array([float(predicted[part] == layout.requested[part]) if part in predicted else np.nan
                               for predicted, layout in zip(colours.predicted, layouts)]) for part in SCORED_PARTS}
    correct = _scored_mean(np.stack(list(by_part.values()), axis=1), axis=1)  # per image, over its shown parts
    scores = {"silhouette_iou": silhouette_iou(images, targets.masks), "colour_accuracy": correct,
              **{f"colour_accuracy/{part}": values for part, values in by_part.items()},
              **pose_transfer_scores(images, targets.truth)}
    if lpips is not None:
        scores["lpips"] = lpips(images, targets.truth)
    return scores


def _lpips(folder: str | None, mesh: Any = None, rules: Any = None) -> Any:
    """uint8 images -> per-image LPIPS (VGG, inputs mapped to [-1, 1]), or None without weights;
    batch-sharded on `mesh` by `rules` (eval.placement.eval_mesh's defaults). Loaded before any
    sampling (folders.load_metric_networks), so a bad --lpips_dir fails at once."""
    if not folder:
        return None
    import jax

    from upgpt_jax.eval.folders import load_metric_networks
    from upgpt_jax.eval.placement import eval_mesh, padded_size, place_batch, replicate

    (module, params), _, _ = load_metric_networks(folder, None)
    mesh, rules = eval_mesh(mesh, rules)
    params = replicate(params, mesh)
    # [0, 1] in, scaled inside
    distance = jax.jit(lambda weights, x, y: module.apply({"params": weights}, x, y, True))

    def score(images: np.ndarray, truth: np.ndarray) -> np.ndarray:
        pair = {"x": np.asarray(images, np.float32) / 255.0, "y": np.asarray(truth, np.float32) / 255.0}
        placed = place_batch(pair, padded_size(len(images), mesh, rules), mesh, rules)
        return np.asarray(distance(params, placed["x"], placed["y"]))[:len(images)]

    return score


def _interpolation(sampler: Any, targets: _Targets, pairs: int, image_size: tuple[int, int],
                   seed: int) -> dict[str, float]:
    """Mean identity consistency over `pairs` source -> target sweeps (one seed per sweep) of the
    targets' people (their texts)."""
    from upgpt_jax.sampling.sources import silhouette
    from upgpt_jax.smpl.interpolate import interpolate_smpl

    drift, agreement = [], []
    for index in range(pairs):
        record = targets.examples.record(index)
        identity_id = int(record["identity"])
        identity = _identity(record)
        person = targets.people[index]
        poses = interpolate_smpl(np.asarray(record["source_smpl"]), np.asarray(record["smpl"]),
                                 INTERPOLATION_FRAMES, "slerp")
        frames_people = [dataclasses.replace(person, smpl=pose.astype(np.float32),
                                             mask=silhouette(pose, image_size, identity_id)) for pose in poses]
        frames = sampler(frames_people, [seed + index] * len(poses))
        result = identity_consistency(frames, [target_layout(identity, pose, image_size) for pose in poses])
        drift.append(result.colour_drift)
        agreement.append(result.agreement)
    return {"colour_drift": float(np.nanmean(drift)), "agreement": float(np.nanmean(agreement))}
