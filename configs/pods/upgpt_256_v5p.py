"""The released UPGPT (256x192) trained on a TPU v5p-128 slice: 64 chips (v5p:4x4x4), FSDP over 4.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v5p.py --workdir gs://$BUCKET/upgpt_256_v5p \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v5p.py

AOT figures (python -m upgpt_jax.aot on a 2-core CPU host, libtpu 0.0.42.1, 2026-12-07, compiled
before the update-size guard of train/state.py; roofline times are estimates, see
benchmarks/RESULTS.md): 13.89 GiB of 95 per chip (1.87 arguments, 12.02 temporaries); per chip per
step XLA counts 11.95 TFLOP and 159.8 GB accessed, 88.3 GB of it HBM traffic. Roofline 0.058 s on
XLA's bytes (1107 img/s per chip, MFU 49.1%) or 0.032 s on the HBM traffic (2005 img/s per chip,
MFU 88.9%, 28 ms of it compute): memory-bound. Collectives: 496 weight all-gathers (1.63 GB) and
57 gradient reduce-scatters (0.71 GB), all synchronous in the schedule (none overlaps compute).
There is room for per-chip batch 128 (~26 GiB).
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v5p:4x4x4", chips=64, per_chip_batch=64, fsdp=4)
