"""The released UPGPT (256x192) trained on a TPU v4-128 slice: 64 chips (v4:4x4x4, megacore), FSDP over 4.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v4.py --workdir gs://$BUCKET/upgpt_256_v4 \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v4.py

AOT figures: not compiled at full size yet (`python -m upgpt_jax.aot --config
configs/pods/upgpt_256_v4.py` gives them; run it alone, it holds ~9 GiB of host memory). By the
v5p-128 compile of the same mesh (fsdp 4): 1.87 GiB of state per chip and ~0.19 GiB of
temporaries per example, so per-chip batch 32 needs ~8 GiB of v4's 32.
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v4:4x4x4", chips=64, per_chip_batch=32, fsdp=4)
