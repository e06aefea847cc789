"""The released UPGPT (256x192) trained on a TPU v5p-128 slice: 64 chips (v5p:4x4x4), FSDP over 4.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v5p.py --workdir gs://$BUCKET/upgpt_256_v5p \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v5p.py

AOT figures (python -m upgpt_jax.aot on a 2-core CPU host, libtpu 0.0.42.1, 2026-12-07, with our
flash-attention kernel; roofline times are estimates, see benchmarks/RESULTS.md): 9.83 GiB of 95 per chip
(1.87 arguments, 7.96 temporaries); per chip per step XLA counts 12.39 TFLOP and 139.1 GB accessed,
62.0 GB of it HBM traffic. Roofline 0.050 s on XLA's bytes (1272 img/s per chip, MFU 56.4%) or
0.028 s on the HBM traffic, where it is compute-bound (2255 img/s per chip; 22 ms of traffic under
28 ms of compute). Collectives: 496 weight all-gathers (1.63 GB), 57 gradient reduce-scatters
(0.71 GB) and 12 all-reduces (0.34 GB), all synchronous in the schedule. With jax's flash kernel:
13.89 GiB, 159.8 GB (88.3 GB HBM traffic), MFU 49.1% / 88.9%. There is room for per-chip batch 128.
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v5p:4x4x4", chips=64, per_chip_batch=64, fsdp=4)
