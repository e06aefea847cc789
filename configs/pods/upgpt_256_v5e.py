"""The released UPGPT (256x192) trained on a TPU v5e-256 pod: 256 chips (v5e:16x16), FSDP over 16.

Launch (every host of the slice runs the same command; features precomputed once with
`python -m upgpt_jax.train.precompute`, so the step runs the UNet alone):
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd upgpt-jax && \
    python train.py --config configs/pods/upgpt_256_v5e.py --workdir gs://$BUCKET/upgpt_256_v5e \
    --config.data.features_dir=gs://$BUCKET/features/deepfashion_256 --distributed=auto"
Check the plan on any host, ahead of time (pip install -e ".[tpu]"):
  python -m upgpt_jax.aot --config configs/pods/upgpt_256_v5e.py

AOT figures (python -m upgpt_jax.aot on a 2-core CPU host, libtpu 0.0.42.1; roofline times are
estimates; compiled before the upsampler's activation constraint, see benchmarks/RESULTS.md): 14.46 GiB of 16 per chip (0.64 arguments, 13.82
temporaries), XLA 6.18 TFLOP and 159.3 GB per chip per step, roofline 0.195 s (memory-bound):
164 img/s per chip, MFU 17.0%. 100.8 of those 159 GB were all-gathers of the upsampled
activations; `Upsample` now constrains them to stay batch-sharded (models/layers.py), a fix whose
effect at full size is not measured yet. Data-parallel
(fsdp=1, per-chip batch 16) fits in 10.72 GiB at 150 img/s per chip (MFU 15.5%).
"""
import ml_collections

from upgpt_jax.config_base import pod_config


def get_config() -> ml_collections.ConfigDict:
    return pod_config("v5e:16x16", chips=256, per_chip_batch=32, fsdp=16)
