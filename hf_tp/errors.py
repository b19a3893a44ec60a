"""Exception types of hf_tp: each one says what failed, the numbers, and how to fix it."""


class ShardingError(ValueError):
    """A model cannot be split the way it was asked (heads, sizes, tp_size)."""


class PolicyError(ValueError):
    """A sharding policy does not fit the model it was applied to, or no policy exists."""


class CheckpointError(ValueError, OSError):
    """A checkpoint is missing, corrupt, or in a format hf_tp refuses to read.

    Also an OSError, the type Transformers raises for the same problems, so that code written
    around Transformers' from_pretrained (``except OSError``) catches it too."""


class WorkerError(RuntimeError):
    """A worker process died, hung, or lost its process group (single-controller mode)."""
