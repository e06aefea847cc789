"""The released UPGPT (256x192) trained on a TPU v4-128 slice: 64 chips (v4:4x4x4, megacore), FSDP over 4.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v4.py --workdir gs://$BUCKET/upgpt_256_v4 \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v4.py

AOT figures (python -m upgpt_jax.aot on a 2-core CPU host, libtpu 0.0.42.1, 2026-12-07; roofline
times are estimates, see benchmarks/RESULTS.md): 8.59 GiB of 32 per chip (1.86 arguments, 6.73
temporaries); per chip per step XLA counts 5.98 TFLOP and 131.2 GB accessed, 33.1 GB of it HBM
traffic. Roofline 0.107 s on XLA's bytes (299 img/s per chip, MFU 22.2%) or 0.027 s on the HBM
traffic (1189 img/s per chip, MFU 88.0%, 24 ms of it compute): memory-bound. Collectives: 496
weight all-gathers (1.62 GB) and 57 gradient reduce-scatters (0.71 GB), synchronous.
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v4:4x4x4", chips=64, per_chip_batch=32, fsdp=4)
