"""Tensor-parallel building blocks: slicing math, collectives and parallel layers. No model knowledge."""
