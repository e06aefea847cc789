"""Evaluation metrics (LPIPS) computed in JAX from local weight files."""
