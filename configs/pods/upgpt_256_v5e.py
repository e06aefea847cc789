"""The released UPGPT (256x192) trained on a TPU v5e-256 pod: 256 chips (v5e:16x16), FSDP over 16.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v5e.py --workdir gs://$BUCKET/upgpt_256_v5e \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v5e.py

AOT figures (python -m upgpt_jax.aot on a 2-core CPU host, libtpu 0.0.42.1, 2026-12-07, with our
flash-attention kernel; roofline times are estimates, see benchmarks/RESULTS.md): 4.39 GiB of 16 per chip
(0.64 arguments, 3.75 temporaries); per chip per step XLA counts 6.22 TFLOP and 82.0 GB accessed,
of which 18.0 GB are HBM traffic in the scheduled program. Roofline 0.100 s on XLA's bytes (320
img/s per chip, MFU 33.0%, memory-bound) or 0.033 s on the HBM traffic, where it is compute-bound
(968 img/s per chip; 22 ms of traffic under 33 ms of compute). All-gathers 7.4 GB (weights, 114
overlapping compute), gradient all-reduces and reduce-scatters 0.95 GB. With jax's flash kernel:
6.00 GiB, 104.4 GB (30.7 GB HBM traffic), MFU 25.9% / 88%; before any flash kernel: 8.41 GiB,
126.7 GB (52.1 GB), MFU 21.4% / 52%; before the upsampler's activation constraint: 14.46 GiB,
159.3 GB (100.8 GB of all-gathered activations), MFU 17.0%.
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v5e:16x16", chips=256, per_chip_batch=32, fsdp=16)
