"""The released UPGPT (256x192) trained on a TPU v6e-256 slice: 256 chips (v6e:16x16), FSDP over 16.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v6e.py --workdir gs://$BUCKET/upgpt_256_v6e \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v6e.py

AOT figures: not compiled at full size yet (`python -m upgpt_jax.aot --config
configs/pods/upgpt_256_v6e.py` gives them; run it alone, it holds ~9 GiB of host memory). The same
program as the v5e-256 plan (mesh, per-chip batch), which needs 6.00 GiB per chip there, on v6e's
32 GiB; v6e has 4.7x v5e's peak and 2x its bandwidth, so the step is memory-bound by a wider
margin: bytes are what to cut (benchmarks/RESULTS.md).
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v6e:16x16", chips=256, per_chip_batch=32, fsdp=16)
