"""The benchmark scripts run end to end on a tiny config, peers included (CPU smoke runs).

Their timings are not asserted (speed is reported by the scripts, never tested); what is checked
is that every measurement they promise is made and written, with the analytic FLOP counts of
upgpt_jax.flops and finite losses.
"""
import importlib.util
import json
import math
import pathlib

import pytest

from upgpt_jax.flops import train_step_flops, unet_forward_flops

REPO = pathlib.Path(__file__).resolve().parents[1]
# The tiny test model (test_train.small_config's widths) as flags of the scripts.
SMALL_MODEL = ["--config.model.unet.channels=16", "--config.model.unet.channel_mult=(1,2)",
               "--config.model.unet.num_res_blocks=1", "--config.model.unet.attention_levels=(1,)",
               "--config.model.unet.num_heads=2", "--config.model.unet.context_dim=32",
               "--config.model.unet.norm_groups=4", "--config.model.fusion.text_dim=32",
               "--config.model.fusion.style_dim=32", "--config.model.fusion.context_dim=32",
               "--config.model.clip.text_width=32", "--config.model.clip.text_layers=1",
               "--config.model.clip.text_heads=2", "--config.model.clip.vision_width=32",
               "--config.model.clip.vision_layers=1", "--config.model.clip.vision_heads=2",
               "--config.model.clip.patch_size=16", "--config.model.clip.projection_dim=32",
               "--config.model.clip.max_length=16"]


def run_script(name, argv, monkeypatch):
    """benchmarks/<name>.py's main(argv), in a fresh module (its flags are its own). ml_collections
    registers the --config.* override flags from sys.argv when the module defines its config flag."""
    monkeypatch.setattr("sys.argv", argv)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)
    return module


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_step_benchmark_times_ours_and_the_eager_peer(tmp_path, monkeypatch):
    out = tmp_path / "train_step.jsonl"
    script = run_script("train_step", ["train_step.py", f"--config={REPO / 'configs/synthetic_tiny.py'}", "--batch=2",
                                       "--steps=1", "--warmup=0", "--peers", "--peers_on_cpu", "--nopeer_compile",
                                       f"--out={out}", *SMALL_MODEL], monkeypatch)
    ours, peer = read_lines(out)
    config = script.FLAGS.config
    assert ours["impl"].startswith("upgpt_jax") and peer["impl"].startswith("diffusers UNet2DConditionModel torch eager")
    assert ours["flops_per_image"] == pytest.approx(train_step_flops(config.model))
    assert peer["flops_per_image"] == pytest.approx(train_step_flops(config.model, context_requires_grad=False))
    for row in (ours, peer):
        assert row["batch"] == 2 and row["img_per_s"] > 0 and math.isfinite(row["last_loss"])
    assert ours["compile_s"] > 0 and ours["peak_bytes"] > 0


def test_sampling_benchmark_times_the_guided_loop_end_to_end_and_the_peer(tmp_path, monkeypatch):
    out = tmp_path / "sampling.jsonl"
    script = run_script("sampling", ["sampling.py", f"--config={REPO / 'configs/synthetic_tiny.py'}", "--batches=2",
                                     "--num_steps=2", "--guidance=3", "--runs=1", "--warmup=0", "--end_to_end", "--peers",
                                     "--peers_on_cpu", "--nopeer_compile", f"--out={out}", *SMALL_MODEL], monkeypatch)
    rows = read_lines(out)
    assert len(rows) == 3  # the loop, end to end, the diffusers peer
    config = script.FLAGS.config
    for row in rows:
        assert row["batch"] == 2 and row["latency_s"] > 0 and row["num_steps"] == 2
        assert row["branches"] == 2 and row["unet_rows_per_step"] == 4  # classic CFG: uncond + cond
        assert row["unet_forward_flops"] == pytest.approx(unet_forward_flops(config.model))
