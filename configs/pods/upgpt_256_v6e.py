"""The released UPGPT (256x192) trained on a TPU v6e-256 slice: 256 chips (v6e:16x16), FSDP over 16.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v6e.py --workdir gs://$BUCKET/upgpt_256_v6e \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v6e.py

AOT figures (python -m upgpt_jax.aot on a 2-core CPU host, libtpu 0.0.42.1, 2026-12-07, with our
flash-attention kernel; roofline times are estimates, see benchmarks/RESULTS.md): 4.25 GiB of 32 per chip
(0.64 arguments, 3.60 temporaries); per chip per step XLA counts 6.20 TFLOP and 86.7 GB accessed,
20.1 GB of it HBM traffic. Roofline 0.053 s on XLA's bytes (605 img/s per chip, MFU 13.4%) or
0.012 s on the HBM traffic (2611 img/s per chip, MFU 57.9%, 7 ms of it compute): memory-bound, as
v6e has 4.7x v5e's peak and 2x its bandwidth; bytes are what to cut. With jax's flash kernel: 6.47
GiB, 102.7 GB (30.9 GB HBM traffic), MFU 11.3% / 37.7%; per-chip batch 64 was compiled then too
(11.83 GiB; HBM traffic 63.5 GB, MFU 14.7% / 36.6%): no better, so 32 stays.
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v6e:16x16", chips=256, per_chip_batch=32, fsdp=16)
