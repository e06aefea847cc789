"""The diffusion-stage trainer: optimizer math, NaN guard, exact resume, SIGTERM, sharded == unsharded.

All runs use `small_config` (a sub-M-parameter model) so that one compilation serves most tests:
`upgpt_jax.train.build.build` shares jitted functions between runs that differ only in loop settings.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from conftest import jax_compilation_cache
from upgpt_jax.rundir.layout import CHECKPOINT_DIR, METRICS_FILE
from upgpt_jax.rundir.shardings import with_shardings
from upgpt_jax.train import trainer
from upgpt_jax.train.build import build
from upgpt_jax.train.checkpointing import Checkpointer
from upgpt_jax.train.optimizer import (
    current_learning_rate, ema_decay_at, ema_update, learning_rate_schedule, make_optimizer)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent XLA cache for this module's in-process runs and its train.py subprocesses,
    so that the subprocesses load the small model's compiled functions instead of compiling them."""
    with jax_compilation_cache(tmp_path_factory.mktemp("jax_cache")) as folder:
        yield folder


def small_config(**train_overrides):
    """synthetic_tiny at 64x48 with minimal widths and depths (fast to compile on 2 cores)."""
    from configs import synthetic_tiny

    config = synthetic_tiny.get_config()
    model = config.model
    model.unet.update(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                      context_dim=32, norm_groups=4)
    model.vae.update(channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4)
    model.clip.update(text_width=32, text_layers=1, text_heads=2, vision_width=32, vision_layers=1, vision_heads=2,
                      image_size=32, patch_size=16, projection_dim=32, max_length=16)
    model.fusion.update(text_dim=32, style_dim=32, context_dim=32, learned_heads=2)
    config.optim.update(learning_rate=1e-3, warmup_steps=2)
    config.train.update({**dict(batch_size=8, num_steps=4, log_every=1, checkpoint_every=100, keep_checkpoints=3,
                                ema_decay=0.9), **train_overrides})
    config.data.num_examples = 16
    # Unweighted, so the same config also trains from prepared data and features (which have no part
    # maps); tests/test_part_loss_weights.py trains with the main job's weights.
    config.data.part_loss_weights = {}
    return config


def read_metrics(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / METRICS_FILE).read_text().splitlines()]


def host_copy(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- optimizer --------------------------------------------------------------------------------


def reference_adamw(params, grads_per_step, lr, warmup, clip, b1, b2, eps, wd):
    """AdamW with a linear warm-up lr * min(1, t / warmup) (t from 1) after global-norm clipping."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in grads.values()))
        scale = min(1.0, clip / norm)
        rate = lr * min(1.0, t / warmup)
        for k in params:
            g = grads[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            params[k] = params[k] - rate * (m_hat / (np.sqrt(v_hat) + eps) + wd * params[k])
    return params


def test_optimizer_matches_hand_computed_adamw_with_warmup_and_clipping():
    optim = ConfigDict(dict(name="adamw", learning_rate=0.1, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
                            warmup_steps=3, grad_clip_norm=1.0))
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(np.float32)}
    # Norms around 5: clipping is active on every step.
    grads = [{k: (3 * rng.normal(size=p.shape)).astype(np.float32) for k, p in params.items()} for _ in range(5)]

    optimizer = make_optimizer(optim)
    state, current = optimizer.init(params), params
    rates = []
    for g in grads:
        rates.append(float(current_learning_rate(optim, state)))
        updates, state = optimizer.update(g, state, current)
        current = optax.apply_updates(current, updates)
    expected = reference_adamw(params, grads, 0.1, 3, 1.0, 0.9, 0.999, 1e-8, 0.01)
    for k in params:
        np.testing.assert_allclose(current[k], expected[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rates, [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1], rtol=1e-6)

    # Accumulating two micro-batches = one step on their mean gradient.
    accumulating = make_optimizer(optim, grad_accum_steps=2)
    state, current = accumulating.init(params), params
    for g in grads[:2]:
        updates, state = accumulating.update(g, state, current)
        current = optax.apply_updates(current, updates)
    mean = {k: (grads[0][k] + grads[1][k]) / 2 for k in params}
    expected = reference_adamw(params, [mean], 0.1, 3, 1.0, 0.9, 0.999, 1e-8, 0.01)
    for k in params:
        np.testing.assert_allclose(current[k], expected[k], rtol=1e-5, atol=1e-6)
    assert float(current_learning_rate(optim, state, grad_accum_steps=2)) == pytest.approx(0.2 / 3)

    # Cosine decay after the warm-up: optax's cosine_decay_schedule, shifted by the warm-up.
    decaying = ConfigDict({**optim.to_dict(), "warmup_steps": 4, "decay_steps": 12, "end_learning_rate_factor": 0.1})
    reference = optax.cosine_decay_schedule(0.1, decay_steps=8, alpha=0.1)
    schedule = learning_rate_schedule(decaying)
    np.testing.assert_allclose([float(schedule(count)) for count in (0, 3, 8, 12, 20)],
                               [0.025, 0.1, 0.055, 0.01, 0.01], rtol=1e-6)
    np.testing.assert_allclose([float(schedule(count)) for count in range(4, 16)],
                               [float(reference(count - 4)) for count in range(4, 16)], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_steps"):
        learning_rate_schedule(ConfigDict({**decaying.to_dict(), "decay_steps": 4}))

    ema = ema_update({"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}, decay=0.75)
    np.testing.assert_allclose(ema["w"], 0.25)
    # LitEma's warm-up: min(decay, (1 + n) / (10 + n)) at update n.
    np.testing.assert_allclose([float(ema_decay_at(0.9999, n)) for n in (1, 10, 100, 10**6)],
                               [2 / 11, 11 / 20, 101 / 110, 0.9999], rtol=1e-6)


# --- train step -------------------------------------------------------------------------------


def random_features(config, seed):
    """A feature batch (what the frozen encoders produce) of the right shapes, float32."""
    rng = np.random.default_rng(seed)
    batch, model = config.train.batch_size, config.model
    height, width = (size // 8 for size in model.image_size)
    return {
        "latent_moments": rng.normal(size=(batch, height, width, 2 * model.vae.z_channels)).astype(np.float32),
        "text_embedding": rng.normal(size=(batch, model.clip.max_length, model.fusion.text_dim)).astype(np.float32),
        "style_embedding": rng.normal(size=(batch, model.fusion.num_parts, model.fusion.style_dim)).astype(np.float32),
        "person_mask": np.sign(rng.normal(size=(batch, height, width, 1))).astype(np.float32),
        "style_present": rng.random((batch, model.fusion.num_parts)) > 0.3,
        "pose": rng.normal(size=(batch, model.fusion.pose_dim)).astype(np.float32),
    }


def test_non_finite_loss_skips_the_update_and_counts_it():
    config = small_config()
    parts = build(config)
    state = parts.init()
    before = host_copy((state.params, state.opt_state, state.ema_params))

    bad = random_features(config, 0)
    bad["latent_moments"][0, 0, 0, 0] = np.nan
    state, metrics = parts.train_step(state, bad)
    assert not bool(metrics["finite"]) and int(metrics["skipped"]) == 1 and int(state.step) == 1
    assert_trees_equal(host_copy((state.params, state.opt_state, state.ema_params)), before)

    state, metrics = parts.train_step(state, random_features(config, 1))
    assert bool(metrics["finite"]) and int(state.skipped) == 1 and int(state.step) == 2
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), host_copy(state.params), before[0])
    assert any(jax.tree.leaves(changed))


# --- the loop ---------------------------------------------------------------------------------


def test_resume_gives_the_losses_and_params_of_an_uninterrupted_run(tmp_path):
    config = small_config(num_steps=4, checkpoint_every=100)
    straight = trainer.train(config, tmp_path / "straight")

    config.train.num_steps = 2
    first_half = trainer.train(config, tmp_path / "resumed")
    assert first_half.last_checkpoint == 2
    config.train.num_steps = 4
    resumed = trainer.train(config, tmp_path / "resumed")

    assert resumed.stop_reason == straight.stop_reason == "done"
    fields = ("step", "loss", "lr", "grad_norm", "skipped")
    expected = [{k: row[k] for k in fields} for row in read_metrics(tmp_path / "straight")]
    got = [{k: row[k] for k in fields} for row in read_metrics(tmp_path / "resumed")]
    assert [row["step"] for row in expected] == [1, 2, 3, 4]
    assert got == expected
    assert_trees_equal(host_copy(resumed.state), host_copy(straight.state))


def test_consecutive_nan_losses_stop_training_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = small_config(num_steps=20, checkpoint_every=1, max_consecutive_nan=3)
    real_make_global_batch, steps = trainer.make_global_batch, []

    def poisoned_after_two_steps(local_batch, mesh, rules):
        steps.append(len(steps) + 1)
        if len(steps) > 2:  # NaN images -> NaN latents -> NaN loss
            local_batch = {**local_batch, "image": np.full_like(local_batch["image"], np.nan)}
        return real_make_global_batch(local_batch, mesh, rules)

    monkeypatch.setattr(trainer, "make_global_batch", poisoned_after_two_steps)
    result = trainer.train(config, tmp_path)
    assert result.stop_reason == "diverged"
    assert int(result.state.step) == 5 and int(result.state.skipped) == 3
    assert result.last_checkpoint == 2

    checkpointer = Checkpointer(tmp_path / CHECKPOINT_DIR, keep=3)
    assert checkpointer.latest_step() == 2
    parts = build(config)
    restored, _ = checkpointer.restore(2, with_shardings(parts.abstract, parts.shardings))
    checkpointer.close()
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(host_copy(restored.params)))
    assert_trees_equal(host_copy(restored.params), host_copy(result.state.params))  # skipped updates kept them
    assert [row["skipped"] for row in read_metrics(tmp_path)] == [0, 0, 1, 2, 3]


# --- subprocesses -----------------------------------------------------------------------------


def write_config_file(folder):
    """A config file for train.py that returns small_config()."""
    path = pathlib.Path(folder) / "small.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from test_train import small_config


        def get_config():
            return small_config()
    """))
    return path


def subprocess_env(cache_folder, **extra):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache_folder),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_sigterm_saves_a_checkpoint_at_the_step_reached_and_exits_cleanly(tmp_path, shared_compilation_cache):
    workdir = tmp_path / "run"
    command = [sys.executable, str(REPO / "train.py"), f"--config={write_config_file(tmp_path)}",
               f"--workdir={workdir}", "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000"]
    process = subprocess.Popen(command, env=subprocess_env(shared_compilation_cache), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = workdir / METRICS_FILE
    deadline = time.monotonic() + 150
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "train.py did not reach step 2 in time"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    last_step = read_metrics(workdir)[-1]["step"]
    assert f"preempted at step {last_step}; last checkpoint: {last_step}" in output
    checkpointer = Checkpointer(workdir / CHECKPOINT_DIR, keep=3)
    assert checkpointer.latest_step() == last_step
    checkpointer.close()


SHARDED_SCRIPT = """
import json
import jax, numpy as np
from test_train import small_config, random_features
from upgpt_jax.data.pipeline import make_global_batch
from upgpt_jax.train.build import build

assert jax.device_count() == 8
config = small_config()
config.mesh.update(data=2, fsdp=4, tensor=1)
sharded = build(config)
specs = [str(sharding.spec) for sharding in jax.tree.leaves(sharded.shardings.params)]
assert sum("fsdp" in spec for spec in specs) > len(specs) // 2, specs

initial = np.load("initial.npz")
leaves = [initial[f"arr_{index}"] for index in range(len(initial.files))]
state = jax.device_put(jax.tree.unflatten(jax.tree.structure(sharded.abstract), leaves), sharded.shardings)
losses = []
for seed in range(2):
    features = make_global_batch(random_features(config, seed), sharded.mesh, config.axis_rules)
    state, metrics = sharded.train_step(state, features)
    losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
expected = np.load("params.npz")
got = jax.tree.leaves(jax.device_get(state.params))
diff = max(float(np.max(np.abs(expected[f"arr_{index}"] - leaf))) for index, leaf in enumerate(got))
print("RESULT " + json.dumps({"losses": losses, "param_diff": diff}))
"""


def test_sharded_train_step_equals_unsharded(tmp_path, shared_compilation_cache):
    """Two steps on one device vs on 8 fake devices (data=2 x fsdp=4) from the same state."""
    config = small_config()
    parts = build(config)
    state = parts.init()
    np.savez(tmp_path / "initial.npz", *jax.tree.leaves(host_copy(state)))
    expected_losses = []
    for seed in range(2):
        state, metrics = parts.train_step(state, random_features(config, seed))
        expected_losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    np.savez(tmp_path / "params.npz", *jax.tree.leaves(host_copy(state.params)))

    env = subprocess_env(shared_compilation_cache, XLA_FLAGS="--xla_force_host_platform_device_count=8",
                         JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env["PYTHONPATH"]])
    run = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads([row for row in run.stdout.splitlines() if row.startswith("RESULT ")][-1][len("RESULT "):])
    for (loss, norm), (expected_loss, expected_norm) in zip(result["losses"], expected_losses):
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        assert norm == pytest.approx(expected_norm, rel=1e-4)
    assert result["param_diff"] < 1e-5
