"""Evaluate a model (or images already generated) under a fixed protocol; print a table, write JSON.

  python eval.py --protocol synthetic --workdir workdirs/synthetic_tiny/diffusion --out evals/tiny
  python eval.py --protocol synthetic --workdir DIR --num_examples 256 --lpips_dir weights/lpips --out OUT
  python eval.py --protocol upgpt_pose_transfer --params weights/upgpt_256 --config configs/upgpt_256.py \\
      --data_dir DeepFashion --lpips_dir weights/lpips --inception weights/pt_inception-2015-12-05-6726825d.pth --out OUT
  python eval.py --protocol upgpt_pose_transfer --samples_dir OUT/samples --data_dir DeepFashion ... --out OUT2

Protocols (upgpt_jax/eval/protocols/): `synthetic` (the embedded dataset's held-out identities:
silhouette IoU, part colour accuracy, pose-transfer SSIM/PSNR, interpolation identity consistency,
the ablations with text, style or pose dropped, edit success, and the VAE's reconstructions as
the ceiling; a VAE-stage workdir gets those alone), `synthetic_colour_free` (the same with content
texts that name no colours, so colours come from the style crops alone), `upgpt_pose_transfer`
and `upgpt_text_pose` (the paper's DeepFashion protocols: SSIM, MS-SSIM, LPIPS, FID). OUT gets
metrics.json (the table, per-example values, settings) and worst.png (the worst cases). Weights
for LPIPS and FID are local files only; a metric whose weights are not given is skipped and the
JSON says so.
"""
import sys

from absl import app, flags, logging

from upgpt_jax.eval.protocols import EvalOptions
from upgpt_jax.cli_flags import define_model_flags, define_sampler_flags, sampler_overrides

define_model_flags()
define_sampler_flags()

flags.DEFINE_string("protocol", None, "synthetic | synthetic_colour_free | upgpt_pose_transfer | upgpt_text_pose.")
flags.DEFINE_string("out", None, "Output folder (metrics.json, worst.png, and samples when generated).")
flags.DEFINE_string("data_dir", None, "DeepFashion in the original layout (upgpt_* protocols).")
flags.DEFINE_string("samples_dir", None, "Evaluate these generated images instead of sampling (upgpt_*).")
flags.DEFINE_integer("num_examples", None, "Evaluate the first N examples/pairs (default: the protocol's set).")
flags.DEFINE_integer("seed", 0, "Noise seed of the first example (example i uses seed + i).")
flags.DEFINE_string("lpips_dir", None, "Folder with LPIPS weights (vgg16 backbone + lpips' vgg.pth).")
flags.DEFINE_string("inception", None, "FID-Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).")
flags.DEFINE_bool("ablations", True, "synthetic: also sample with text, style or pose dropped.")


def options_from_flags() -> EvalOptions:
    return EvalOptions(
        out_dir=flags.FLAGS.out, workdir=flags.FLAGS.workdir, step=flags.FLAGS.step, weights=flags.FLAGS.weights,
        params_dir=flags.FLAGS.params, config=flags.FLAGS.config, data_dir=flags.FLAGS.data_dir,
        samples_dir=flags.FLAGS.samples_dir, num_examples=flags.FLAGS.num_examples, batch_size=flags.FLAGS.batch_size,
        seed=flags.FLAGS.seed, sampling=sampler_overrides(),
        lpips_dir=flags.FLAGS.lpips_dir, inception_path=flags.FLAGS.inception, ablations=flags.FLAGS.ablations)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from upgpt_jax.compilation_cache import enable_compilation_cache
    from upgpt_jax.eval.protocols import ProtocolError, load_protocols
    from upgpt_jax.eval.report import format_table, write_report
    from upgpt_jax.sampling import ConditionError

    protocols = load_protocols()
    if flags.FLAGS.protocol not in protocols:
        raise app.UsageError(f"--protocol must be one of {sorted(protocols)}, got {flags.FLAGS.protocol!r}")
    if not flags.FLAGS.out:
        raise app.UsageError("--out is required")
    if flags.FLAGS.workdir and flags.FLAGS.params:
        raise app.UsageError("give either --workdir (a training run) or --params with --config, not both")
    enable_compilation_cache()
    try:
        result = protocols[flags.FLAGS.protocol](options_from_flags())
    except (ProtocolError, ConditionError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_table(result))
    for path in write_report(result, flags.FLAGS.out).values():
        print(path)


if __name__ == "__main__":
    app.run(main)
