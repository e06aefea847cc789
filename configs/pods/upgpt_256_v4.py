"""The released UPGPT (256x192) trained on a TPU v4-128 slice: 64 chips (v4:4x4x4, megacore), FSDP over 4.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v4.py --workdir gs://$BUCKET/upgpt_256_v4 \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v4.py

AOT figures (python -m upgpt_jax.aot on a 2-core CPU host, libtpu 0.0.42.1, 2026-12-07, with our
flash-attention kernel; roofline times are estimates, see benchmarks/RESULTS.md): 6.71 GiB of 32 per chip
(1.86 arguments, 4.85 temporaries); per chip per step XLA counts 6.20 TFLOP and 94.9 GB accessed,
20.2 GB of it HBM traffic. Roofline 0.077 s on XLA's bytes (414 img/s per chip, MFU 30.7%) or
0.024 s on the HBM traffic, where it is compute-bound (1351 img/s per chip; 16 ms of traffic under
24 ms of compute). Collectives: 496 weight all-gathers (1.62 GB), 57 gradient reduce-scatters
(0.71 GB) and 12 all-reduces (0.34 GB), synchronous. With jax's flash kernel: 8.59 GiB, 131.2 GB
(33.1 GB HBM traffic), MFU 22.2% / 88%.
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v4:4x4x4", chips=64, per_chip_batch=32, fsdp=4)
