"""A training run's folder (`train.py --workdir DIR`), read and laid out in one place.

Training writes the folder; sampling, eval, the VAE-stage hand-over and the exporter read it. They
all sit above this package and agree through it, and it imports none of them:
- `layout`: where things are (`DIR/checkpoints/<step>/{state,data,config}`, `DIR/metrics.jsonl`,
  `DIR/tensorboard/`, `DIR/profile/`) and the one place orbax managers of a run are built (the
  trainer's writer and the readers);
- `shardings`: which parameter-tree parts a training stage holds and where they live on a mesh;
- `restore`: a run's config (it travels inside each checkpoint) and a checkpoint's params or EMA;
- `vae`: the VAE of a run (or of a converted-params folder), for `train.init_vae_from`.
"""
