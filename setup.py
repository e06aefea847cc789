"""upgpt-jax: UPGPT (universal person-image latent diffusion) in JAX/Flax.

Install for use: `pip install -e .`; for the tests: `pip install -e ".[test]"` (see README.md).
"""
from setuptools import find_packages, setup

setup(
    name="upgpt-jax",
    version="0.1.0",
    description="UPGPT person-image latent diffusion (generation, pose transfer, editing, interpolation) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["upgpt_jax", "upgpt_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml_collections>=1.1.0",
        "absl-py>=2.1",
        # 4.57.x is the last line that ships the Flax CLIP models (5.0 removed Flax).
        "transformers>=4.57.6,<4.58",
        "huggingface-hub>=0.34,<1.0",
        "tokenizers>=0.22,<=0.23.0",
        "tensorflow-datasets>=4.9.10",
        # The input pipeline (upgpt_jax/data/pipeline.py): index order, read-ahead, worker processes.
        "grain>=0.2.18,<0.3",
        "numpy>=1.26",
        "pillow>=10.0",
        "safetensors>=0.4",
        "ftfy>=6.1",  # CLIP's text cleaning, as the original tokenizer does.
        # Any path may be a gs:// URL (upgpt_jax/storage.py): etils.epath opens it through gcsfs.
        "etils[epath]>=1.15.0",
        "gcsfs>=2026.10.1",
        # TensorBoard's Event/Summary protos and CRC-32C without TensorFlow (upgpt_jax/train/summary.py).
        "tensorboardX>=2.6.5",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            # The CPU wheel on the local disk; an unpinned torch resolves a multi-GB CUDA build.
            "torch==2.13.0",
            # 0.39.0 is the last diffusers with the Flax UNet (for the benchmarks' Flax peer).
            "diffusers==0.39.0",
            # The original LDM modules (stable-diffusion-sdkit, installed with --no-deps, see
            # README) are the independent reference for the LDM checkpoint converter; they need these.
            "einops>=0.7",
            "omegaconf>=2.3",
            "smplx==0.1.28",
            # The independent reader of our TensorFlow-free event files (runs on its TF stub).
            "tensorboard==2.21.0",
            # Independent references of the evaluation metrics (SSIM/PSNR/CIELAB; the original
            # evaluation's SSIM and MS-SSIM).
            "scikit-image==0.26.0",
            "pytorch-msssim==1.0.0",
            # A local GCS server for tests/test_object_storage.py (gs:// workdirs, data, outputs).
            "gcp-storage-emulator==2026.7.19",
        ],
        # The browser app (python -m upgpt_jax.app) and its test in a real browser (selenium drives
        # Debian's chromium + chromium-driver, see .ci/run). gradio 6.18+ needs huggingface-hub 1.x,
        # which transformers 4.57 (the last with Flax CLIP) refuses.
        "app": ["gradio==6.17.3", "selenium>=4.51"],
        # Reading PyTorch .ckpt/.bin weights (safetensors needs no torch).
        "convert": ["torch==2.13.0"],
        "smpl": ["smplx==0.1.28", "torch==2.13.0"],
        "cuda": ["jax[cuda12]>=0.10.2,<0.13"],
        # jax for TPU VMs; its libtpu also lets any host compile for a TPU topology ahead of time
        # (python -m upgpt_jax.aot; the tests install it for that).
        "tpu": ["jax[tpu]>=0.10.2,<0.13"],
    },
)
