"""Ahead-of-time compilation for accelerators this host does not have (`python -m upgpt_jax.aot`).

programs: the real train step / sampler with abstract, sharded arguments; report: per-chip memory,
XLA cost and a roofline estimate; hlo: the collectives the compiled program runs.
"""
