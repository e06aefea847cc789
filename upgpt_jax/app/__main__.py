"""Serve UPGPT's four tasks in a browser.

  python -m upgpt_jax.app --workdir workdirs/synthetic_tiny/diffusion [--port 7860]
  python -m upgpt_jax.app --params weights/upgpt_256 --config configs/upgpt_256.py

The model is loaded once and the default sampler compiled in the background while the page is
already served (its status line says when it is ready). --method/--num_steps/--eta/--guidance set
the page's defaults; --pose_dir adds SMPL files (FrankMocap pickles, .npz, .npy, .json) to the
pose gallery. Needs the app extra: pip install -e ".[app]".
"""
from __future__ import annotations

import threading

from absl import app, flags, logging

from upgpt_jax.cli_flags import check_model_flags, define_model_flags, define_sampler_flags, sampler_overrides

define_model_flags()
define_sampler_flags()
flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0 for every interface).")
flags.DEFINE_integer("port", 7860, "Port to serve on.")
flags.DEFINE_string("pose_dir", None, "Folder of SMPL files for the pose gallery (default: the shared "
                    "DeepFashion FrankMocap samples beside the checkout, when present).")
flags.DEFINE_integer("gallery_examples", 6, "Test examples whose poses the gallery offers.")
flags.DEFINE_string("smpl_model_dir", None, "SMPL model files (smplx layout) to render person masks.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    check_model_flags()
    from upgpt_jax import sampling
    from upgpt_jax.app.layout import build_page
    from upgpt_jax.app.poses import pose_gallery, thumbnails
    from upgpt_jax.app.requests import generate_request
    from upgpt_jax.app.service import SamplingService
    from upgpt_jax.compilation_cache import enable_compilation_cache

    overrides = sampler_overrides()
    enable_compilation_cache()
    if flags.FLAGS.workdir:
        loaded = sampling.load_from_workdir(flags.FLAGS.workdir, flags.FLAGS.step, flags.FLAGS.weights)
    else:
        loaded = sampling.load_from_params(flags.FLAGS.params, flags.FLAGS.config)
    service = SamplingService(loaded, dict(overrides, batch_size=flags.FLAGS.batch_size), flags.FLAGS.smpl_model_dir)
    gallery = pose_gallery(service.context, flags.FLAGS.pose_dir, flags.FLAGS.gallery_examples)
    warm_up = generate_request("a person", next(iter(gallery.values())), [], 1, 0)
    threading.Thread(target=service.warm_up, args=(warm_up,), daemon=True).start()
    page = build_page(service, gallery, thumbnails(service.context, gallery))
    page.queue(default_concurrency_limit=1).launch(server_name=flags.FLAGS.host, server_port=flags.FLAGS.port)


if __name__ == "__main__":
    app.run(main)
