"""The released UPGPT (256x192) trained on a TPU v5p-128 slice: 64 chips (v5p:4x4x4), FSDP over 4.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v5p.py --workdir gs://$BUCKET/upgpt_256_v5p \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v5p.py

AOT figures: not compiled at full size yet (the compile of this plan did not finish within the
session that wrote it; `python -m upgpt_jax.aot --config configs/pods/upgpt_256_v5p.py` gives them).
Memory by scaling the v5e compiles: the per-chip state is 1/4 of 6.7 GiB and per-example temporaries
~0.4 GiB, so per-chip batch 64 needs ~27 GiB of v5p's 95.
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v5p:4x4x4", chips=64, per_chip_batch=64, fsdp=4)
