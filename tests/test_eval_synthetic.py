"""eval.py's `synthetic` protocol on a checkpointed tiny run (random weights, a few DDIM steps).

What is checked here is the protocol's wiring: which images it samples for each variant and what
it compares them with. The metrics themselves are checked against independent references in
test_synthetic_metrics.py, test_image_metrics.py and test_guidance.py.
"""
import contextlib
import dataclasses
import io
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upgpt_jax import sampling
from upgpt_jax.diffusion import NoiseSchedule, guided_eps_fn
from upgpt_jax.eval.denoiser import TIMESTEPS
from upgpt_jax.eval.protocols import EvalOptions, ProtocolError, load_protocols
from upgpt_jax.eval.protocols.synthetic import VARIANTS
from upgpt_jax.data.synthetic import describe_colour_free, identity_from_id
from upgpt_jax.eval.edit_success import choose_edit, edit_scores
from upgpt_jax.eval.synthetic import (
    SCORED_PARTS, part_colour_accuracy, pose_transfer_scores, silhouette_iou, target_layout)
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.sampling.sampler import condition_embeddings, encode_conditions
from upgpt_jax.sampling.sources import DatasetExamples

from references import vae_reconstructions_uint8  # noqa: E402  (tests/ is on sys.path under pytest)

NUM_EXAMPLES = 2
SAMPLING = {"num_steps": 2, "guidance": {"pose": 1.0, "style": 1.0, "text": 2.0}}


@pytest.fixture(scope="module")
def evaluated(checkpointed_run, tmp_path_factory):
    """(the protocol's result, what it wrote to the console: bars on stderr, phase lines on stdout)."""
    options = EvalOptions(out_dir=str(tmp_path_factory.mktemp("eval")), workdir=str(checkpointed_run),
                          num_examples=NUM_EXAMPLES, batch_size=NUM_EXAMPLES, sampling=SAMPLING)
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        return load_protocols()["synthetic"](options), console.getvalue()


@pytest.fixture(scope="module")
def result(evaluated):
    return evaluated[0]


def test_the_console_names_each_variant_and_times_the_scoring(evaluated):
    console = evaluated[1]
    for variant in VARIANTS:
        assert f"sample {variant} (compiling the sampler)" in console  # one bar per variant, named
        assert re.search(rf"score {variant} \(.*\): \d+\.\d s", console)
    for phase in ("load the model", "autoencoder: reconstruct and score", "denoiser sensitivity", "interpolation:"):
        assert re.search(rf"{phase}.*: \d+\.\d s", console), phase


def test_every_variant_is_scored_per_example(result):
    for variant in VARIANTS:
        for metric in ("silhouette_iou", "colour_accuracy", "ssim", "psnr"):
            values = result.per_example[f"{variant}/{metric}"]
            assert len(values) == NUM_EXAMPLES
            assert result.metrics[f"{variant}/{metric}"] == pytest.approx(np.nanmean(values))
        assert all(0.0 <= value <= 1.0 for value in result.per_example[f"{variant}/silhouette_iou"])
        for part in SCORED_PARTS:  # the fraction of the images showing the part that show its colour
            values = np.array(result.per_example[f"{variant}/colour_accuracy/{part}"])
            shown = values[~np.isnan(values)]
            assert set(shown) <= {0.0, 1.0}
            if shown.size:
                assert result.metrics[f"{variant}/colour_accuracy/{part}"] == pytest.approx(shown.mean())
            else:
                assert np.isnan(result.metrics[f"{variant}/colour_accuracy/{part}"])
    assert {"interpolation/colour_drift", "interpolation/agreement"} <= set(result.metrics)
    assert result.details["lpips"].startswith("skipped")


def test_samples_are_the_pairs_targets_with_the_variant_conditions(result, checkpointed_run):
    """The rows of worst.png: source, ground truth, reconstruction, then one sample per variant. The
    style-dropped sample equals a sample of the same person without style crops (absent parts take
    the same null embedding); the pose-withheld sample is drawn in the source's person mask without
    the SMPL token, and its colours are read where the source pose puts the parts. The other scores
    are those of the pictured images against the pair's target."""
    loaded = sampling.load_from_workdir(checkpointed_run)
    examples = DatasetExamples(loaded.config, "test")
    assert len(result.worst) == NUM_EXAMPLES
    settings = sampling.SamplingSettings.from_config(loaded.config.sampling, batch_size=NUM_EXAMPLES, **SAMPLING)
    for label, images in result.worst:
        index = int(label.split()[1])  # "example 13\npose_transfer\nSSIM 0.42"
        source, truth, reconstruction, *samples = images
        by_variant = dict(zip(VARIANTS, samples))
        np.testing.assert_array_equal(source, examples.image(index, "source"))
        np.testing.assert_array_equal(truth, examples.image(index))
        person = examples.person(index)
        without_style = sampling.Sampler(loaded, settings)([dataclasses.replace(person, style_images={})], [index])
        # Same values by another route (style_present instead of drop_style); 1 level of uint8 rounding slack.
        assert np.abs(by_variant["text_pose"].astype(int) - without_style[0]).max() <= 1
        scores = pose_transfer_scores(by_variant["pose_transfer"][None], truth[None])
        assert result.per_example["pose_transfer/ssim"][index] == pytest.approx(float(scores["ssim"][0]), abs=1e-6)
        iou = silhouette_iou(by_variant["style_pose"][None], person.mask[None])
        assert result.per_example["style_pose/silhouette_iou"][index] == pytest.approx(float(iou[0]))

        source_mask = examples.person(index, "source").mask
        assert not np.array_equal(source_mask, person.mask)
        no_pose = sampling.Sampler(loaded, dataclasses.replace(settings, dropped=("pose",)))(
            [dataclasses.replace(person, mask=source_mask)], [index])
        np.testing.assert_array_equal(by_variant["text_style"], no_pose[0])
        iou = silhouette_iou(no_pose, person.mask[None])
        assert result.per_example["text_style/silhouette_iou"][index] == pytest.approx(float(iou[0]))
        record = examples.record(index)
        layout = target_layout(identity_from_id(int(record["identity"])), np.asarray(record["source_smpl"]),
                               no_pose.shape[1:3])
        predicted = part_colour_accuracy(no_pose, [layout]).predicted[0]
        expected = np.mean([predicted[part] == layout.requested[part] for part in predicted])
        assert result.per_example["text_style/colour_accuracy"][index] == pytest.approx(expected)
        for part in SCORED_PARTS:  # 1 right, 0 wrong, nan: the source pose hides the part
            value = result.per_example[f"text_style/colour_accuracy/{part}"][index]
            if part in predicted:
                assert value == float(predicted[part] == layout.requested[part])
            else:
                assert np.isnan(value)


def test_edit_success_samples_the_edit_tasks_person_with_the_pose_transfer_seed(result, checkpointed_run):
    """The last column of worst.png is the edited sample: the `edit` task's edited person (its plan
    of the recorded edit) drawn as the task draws it (Sampler.edit) from the pair's pose_transfer
    seed, beside an unedited sample that is the pose_transfer sample; its scores are edit_scores'
    of the two."""
    loaded = sampling.load_from_workdir(checkpointed_run)
    examples = DatasetExamples(loaded.config, "test")
    settings = sampling.SamplingSettings.from_config(loaded.config.sampling, batch_size=NUM_EXAMPLES, **SAMPLING)
    assert result.details["columns of worst.png"][-1] == "edit"
    layouts = [target_layout(identity_from_id(int(examples.record(index)["identity"])),
                             np.asarray(examples.record(index)["smpl"]), tuple(loaded.config.model.image_size))
               for index in range(NUM_EXAMPLES)]
    for label, images in result.worst:
        index = int(label.split()[1])
        assignment = result.details["edits"][index]
        edit = choose_edit(identity_from_id(int(examples.record(index)["identity"])), layouts[index], 0, index)
        assert assignment == (edit.assignments if edit else None)
        if edit is None:
            continue
        job = sampling.plan(sampling.TaskContext(loaded.config), {"task": "edit", "example": index,
                                                                  "edits": assignment, "seed": index})
        unedited, expected, _ = sampling.Sampler(loaded, settings).edit(job.people[:1], job.people[1:], job.seeds[1:])
        assert np.abs(images[-1].astype(int) - expected[0]).max() <= 1
        assert np.abs(images[3].astype(int) - unedited[0]).max() <= 1  # the pose_transfer sample
        scores = edit_scores(expected, unedited, [layouts[index]], [edit])
        for name, values in scores.items():
            assert result.per_example[name][index] == values[0]
    for name in ("edit_success", "edit/part_hit", "edit/others_kept"):
        values = np.array(result.per_example[name])
        assert len(values) == NUM_EXAMPLES and set(values[~np.isnan(values)]) <= {0.0, 1.0}
        assert result.metrics[name] == pytest.approx(np.nanmean(values))
    np.testing.assert_array_equal(result.per_example["edit_success"],
                                  np.array(result.per_example["edit/part_hit"])
                                  * np.array(result.per_example["edit/others_kept"]))


def test_colour_free_protocol_samples_with_texts_that_name_no_colours(checkpointed_run, tmp_path):
    """synthetic_colour_free: the same scores, each person told the colour-free text."""
    options = EvalOptions(out_dir=str(tmp_path), workdir=str(checkpointed_run), num_examples=1, batch_size=1,
                          sampling=SAMPLING, ablations=False)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        colour_free = load_protocols()["synthetic_colour_free"](options)
    assert colour_free.protocol == "synthetic_colour_free" and colour_free.details["texts"].startswith("colour-free")
    assert {"pose_transfer/colour_accuracy", "edit_success", "interpolation/agreement"} <= set(colour_free.metrics)
    loaded = sampling.load_from_workdir(checkpointed_run)
    examples = DatasetExamples(loaded.config, "test")
    person = examples.person(0)
    text = describe_colour_free(identity_from_id(int(examples.record(0)["identity"])))
    settings = sampling.SamplingSettings.from_config(loaded.config.sampling, batch_size=1, **SAMPLING)
    expected = sampling.Sampler(loaded, settings)([dataclasses.replace(person, text=text)], [0])
    (_, images), = colour_free.worst
    assert np.abs(images[3].astype(int) - expected[0]).max() <= 1  # the pose_transfer sample
    assert colour_free.per_example["pose_transfer/ssim"][0] == pytest.approx(
        float(pose_transfer_scores(images[3][None], images[1][None])["ssim"][0]), abs=1e-6)
    edit = colour_free.details["edits"][0]  # its content text names no colour, so the style text edits alone
    assert edit is None or (edit[0].startswith(("top=text:", "bottom=text:")) and edit[1] == f"content={text}")


def test_autoencoder_ceiling_scores_the_vae_reconstructions_of_the_targets(result, checkpointed_run):
    """autoencoder/*: the targets through the VAE (posterior mean, unscaled latents, decoder), as
    uint8, scored like the samples; worst.png shows them beside the ground truth."""
    loaded = sampling.load_from_workdir(checkpointed_run)
    examples = DatasetExamples(loaded.config, "test")
    truth = np.stack([examples.image(index) for index in range(NUM_EXAMPLES)])
    expected = vae_reconstructions_uint8(loaded.model, loaded.params, truth)
    for label, images in result.worst:
        index = int(label.split()[1])  # "example 13\npose_transfer\nSSIM 0.42"
        assert np.abs(images[2].astype(int) - expected[index]).max() <= 1  # float rounding at .5
    scores = pose_transfer_scores(expected, truth)
    masks = np.stack([examples.person(index).mask for index in range(NUM_EXAMPLES)])
    np.testing.assert_allclose(result.per_example["autoencoder/ssim"], scores["ssim"], atol=1e-3)
    np.testing.assert_allclose(result.per_example["autoencoder/silhouette_iou"], silhouette_iou(expected, masks),
                               atol=0.02)
    assert result.metrics["autoencoder/ssim"] == pytest.approx(np.mean(result.per_example["autoencoder/ssim"]))
    assert result.details["columns of worst.png"][:3] == ["source", "ground truth", "autoencoder"]


def test_denoiser_sensitivity_is_the_relative_eps_error_without_each_condition(result, checkpointed_run):
    """denoiser/* against the guidance code's route to the same predictions (guided_eps_fn with
    `dropped`, unit scales), on the pairs' targets noised as the protocol documents."""
    loaded = sampling.load_from_workdir(checkpointed_run)
    examples = DatasetExamples(loaded.config, "test")
    inputs = encode_conditions(loaded, [examples.person(index) for index in range(NUM_EXAMPLES)])
    conditions = condition_embeddings(loaded.clip, loaded.clip_params, {k: jnp.asarray(v) for k, v in inputs.items()})
    truth = np.stack([examples.image(index) for index in range(NUM_EXAMPLES)]).astype(np.float32) / 127.5 - 1.0
    latents = loaded.model.apply({"params": loaded.params}, jnp.asarray(truth), method=UPGPT.encode)
    schedule = NoiseSchedule.from_config(loaded.config.diffusion)
    rng = jax.random.fold_in(jax.random.key(0), 0)  # --seed 0, the first batch
    unit = {"pose": 1.0, "style": 1.0, "text": 1.0}

    def mean_squared_error(dropped=(), shuffle=False):
        used = {key: jnp.roll(value, 1, axis=0) for key, value in conditions.items()} if shuffle else conditions
        eps_fn = guided_eps_fn(loaded.model, loaded.params, jnp.asarray(inputs["person_mask"]), used, unit, dropped)
        errors = []
        for index, timestep in enumerate(TIMESTEPS):
            noise = jax.random.normal(jax.random.fold_in(rng, index), latents.shape, jnp.float32)
            t = jnp.full((NUM_EXAMPLES,), timestep, jnp.int32)
            errors.append(np.mean((np.asarray(eps_fn(schedule.add_noise(latents, noise, t), t)) - noise) ** 2))
        return float(np.mean(errors))

    base = mean_squared_error()
    assert result.metrics["denoiser/eps_mse"] == pytest.approx(base, rel=1e-4)
    expected = {"text_dropped": mean_squared_error(("text",)) / base - 1,
                "style_dropped": mean_squared_error(("style",)) / base - 1,
                "pose_dropped": mean_squared_error(("pose",)) / base - 1,
                "all_shuffled": mean_squared_error(shuffle=True) / base - 1}
    for name, value in expected.items():
        assert result.metrics[f"denoiser/{name}"] == pytest.approx(value, abs=1e-4)
    assert max(abs(value) for value in expected.values()) > 1e-3  # the random model does read its conditions


def test_eval_cli_writes_the_table_json_and_worst_cases(checkpointed_run, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "eval.py", "--protocol", "synthetic", "--workdir", str(checkpointed_run),
               "--num_examples", "1", "--num_steps", "2", "--batch_size", "1", "--noablations", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pose_transfer/silhouette_iou" in result.stdout and "text_pose" not in result.stdout
    assert "sample pose_transfer" in result.stderr and "score pose_transfer" in result.stdout
    record = json.loads((out / "metrics.json").read_text())
    assert record["protocol"] == "synthetic" and record["details"]["num_examples"] == 1
    assert (out / "worst.png").is_file()

    bad = subprocess.run(command[:2] + ["--protocol", "synthetic", "--samples_dir", str(tmp_path), "--workdir",
                                        str(checkpointed_run), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "drop --samples_dir" in bad.stderr and "Traceback" not in bad.stderr


def test_a_run_on_another_dataset_is_refused(checkpointed_run, tmp_path, monkeypatch):
    loaded = sampling.load_from_workdir(checkpointed_run)
    with loaded.config.unlocked():
        loaded.config.data.dataset = "deepfashion_upgpt"
    monkeypatch.setattr("upgpt_jax.eval.protocols.synthetic.load_model", lambda options: loaded)
    with pytest.raises(ProtocolError, match="needs a model trained on synthetic_people"):
        load_protocols()["synthetic"](EvalOptions(out_dir=str(tmp_path), workdir=str(checkpointed_run)))


def test_lpips_scores_uint8_samples_as_the_lpips_package_does(tmp_path):
    """The protocol's LPIPS: uint8 images mapped to [-1, 1], vs lpips.LPIPS(net='vgg')(x, y, normalize=True)."""
    import torch

    from upgpt_jax.eval.protocols.synthetic import _lpips
    from test_lpips import reference_lpips, save_lpips_folder

    reference = reference_lpips("vgg", seed=3)
    score = _lpips(str(save_lpips_folder(reference, "vgg", tmp_path / "lpips")))
    rng = np.random.default_rng(0)
    images, truth = (rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8) for _ in range(2))
    with torch.no_grad():
        unit = lambda batch: torch.from_numpy(batch.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # noqa: E731
        expected = reference(unit(images), unit(truth), normalize=True).view(-1).numpy()
    np.testing.assert_allclose(score(images, truth), expected, rtol=1e-4)
    assert _lpips(None) is None
    with pytest.raises(ProtocolError, match="--lpips_dir"):
        _lpips(str(tmp_path / "absent"))
