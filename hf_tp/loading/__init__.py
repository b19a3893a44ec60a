"""Checkpoint files -> each rank's slices, read straight onto its device."""

from .checkpoint import CheckpointIndex, resolve_checkpoint
from .loader import LoadStats, load_shards, loading_info, make_stager

__all__ = ["CheckpointIndex", "resolve_checkpoint", "LoadStats", "load_shards", "loading_info", "make_stager"]
