"""Benchmarks of bp_jax against the documents' PyTorch, PyTorch at its best, and the hardware limit.

Run `python -m benchmarks --help` from the repository root. Not imported by bp_jax.
"""
