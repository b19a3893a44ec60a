"""hf_tp: tensor-parallel inference for Hugging Face Transformers causal LMs."""

from . import policies
from ._version import __version__
from .auto import AutoModelForCausalLM
from .config import TPConfig
from .errors import CheckpointError, PolicyError, ShardingError, WorkerError
from .orchestration import TPModel

__all__ = ["AutoModelForCausalLM", "TPConfig", "TPModel", "policies", "WorkerError", "ShardingError", "PolicyError", "CheckpointError", "__version__"]
