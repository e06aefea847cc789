"""Weight files and parameter trees, with no model code: reading PyTorch/safetensors files
(`weight_files`), mapping torch state dicts onto Flax trees and back (`torch_params`), and our
converted-params folders (`params_io`).

Below `upgpt_jax.models` (CLIP loads Hugging Face weights through it), the converter
(`upgpt_jax.convert`, which needs the models for the shapes) and the run directory
(`upgpt_jax.rundir`).
"""
