"""Datasets for upgpt-jax: the embedded procedural ``synthetic`` people and (later) DeepFashion."""
