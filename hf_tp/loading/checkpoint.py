"""Find a checkpoint (local folder or hub id) and index which safetensors file holds each tensor."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from .file_ranges import FileRange, RangeReader

# What a model needs besides weights: config, generation config, tokenizer files.
# (*.py: the modelling code of trust_remote_code models.)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]


def resolve_checkpoint(name_or_path: str | os.PathLike, *, revision=None, cache_dir=None, local_files_only=None,
                       token=None, force_download=False, subfolder="") -> Path:
    """A local folder holding the checkpoint. Hub ids go through huggingface_hub's
    snapshot_download, so its cache and HF_HUB_OFFLINE behave as they do for Transformers."""
    path = Path(name_or_path)
    if path.is_dir():
        return _subfolder(path, subfolder)
    if path.exists() or str(name_or_path).startswith((".", "/")):
        raise CheckpointError(f"{name_or_path!s} is not a folder. Pass a folder holding config.json and *.safetensors, or a hub id.")
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/{p}" for p in _HUB_PATTERNS] if subfolder else _HUB_PATTERNS
    try:
        folder = Path(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir,
                                        local_files_only=bool(local_files_only), token=token,
                                        force_download=force_download, allow_patterns=patterns))
    except Exception as exc:  # hub errors come in many types; one message says what to do
        raise CheckpointError(
            f"Could not find {name_or_path!r} locally or download it from the Hugging Face Hub "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}). Check the id, your network or HF_HUB_OFFLINE, "
            "or pass a local folder."
        ) from exc
    return _subfolder(folder, subfolder)


def _subfolder(folder: Path, subfolder: str) -> Path:
    if not subfolder:
        return folder
    if not (folder / subfolder).is_dir():
        raise CheckpointError(f"{folder} has no subfolder {subfolder!r}.")
    return folder / subfolder


def variant_name(filename: str, variant: str | None) -> str:
    """Transformers' file name for a weights ``variant``: model.safetensors -> model.fp16.safetensors,
    model.safetensors.index.json -> model.safetensors.index.fp16.json."""
    if not variant:
        return filename
    head, _, ext = filename.rpartition(".")
    return f"{head}.{variant}.{ext}"


# safetensors dtype names of the floating types a model can be loaded in.
_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class CheckpointIndex:
    """Tensor name -> safetensors file, from model.safetensors.index.json or the single file
    (their ``variant`` names when one is given, as Transformers' ``variant=``)."""

    def __init__(self, folder: Path, variant: str | None = None, quantization=None):
        self.folder = Path(folder)
        # loading.quantization.FP8Format when config.json says the weights are FP8 (None: read as stored)
        self.quantization = quantization
        index_file = self.folder / variant_name("model.safetensors.index.json", variant)
        single = self.folder / variant_name("model.safetensors", variant)
        if variant and not index_file.is_file() and not single.is_file():
            raise CheckpointError(
                f"{self.folder} has no {single.name} or {index_file.name}, the files of variant={variant!r}. "
                "Check the variant's name, or drop variant= to load the default weights."
            )
        if index_file.is_file():
            try:
                weight_map = json.loads(index_file.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index_file} is corrupt ({exc}); re-download or re-save the checkpoint.") from exc
            # one Path per file, shared by its keys: a MoE checkpoint has thousands of keys in a few files
            paths = {fname: self.folder / fname for fname in set(weight_map.values())}
            self.files = {name: paths[fname] for name, fname in weight_map.items()}
        elif single.is_file():
            self.files = {name: single for name in self._keys(single)}
        else:
            others = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if others:
                self.files = {name: self.folder / f for f in others for name in self._keys(self.folder / f)}
            elif any(self.folder.glob("*.bin")) or any(self.folder.glob("*.pt")):
                raise CheckpointError(
                    f"{self.folder} has only pickle (.bin/.pt) weights. hf_tp reads safetensors only, because "
                    "unpickling can run arbitrary code and cannot read a slice. Convert once: "
                    "transformers.AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)."
                )
            else:
                raise CheckpointError(f"{self.folder} holds no model.safetensors or model.safetensors.index.json.")
        missing = sorted(p.name for p in set(self.files.values()) if not p.is_file())  # one stat per file
        if missing:
            raise CheckpointError(f"{self.folder}: the index names files that are missing: {missing}.")
        self._handles: dict[Path, object] = {}
        self._lock = threading.Lock()
        self._ranges = RangeReader()

    @staticmethod
    def _keys(file: Path) -> list[str]:
        try:
            with safe_open(file, framework="pt") as f:
                return list(f.keys())
        except Exception as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file ({exc}); re-download or re-save it.") from exc

    def float_dtype(self) -> torch.dtype | None:
        """The dtype of the first floating tensor of the first file, which Transformers' dtype="auto"
        falls back to when the config names none; None when no tensor is floating."""
        first = min(set(self.files.values()))
        scales = ("weight_scale_inv", "weight_scale", "input_scale") if self.quantization is not None else ()
        for name, file in sorted(self.files.items()):
            if file == first and not name.endswith(scales):  # FP8 scales are fp32 in bf16 models
                dtype = _FLOAT_DTYPES.get(self._open(first).get_slice(name).get_dtype())
                if dtype is not None:
                    return dtype
        return None

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def handle(self, name: str):
        """An open safe_open handle for the file holding ``name`` (memory-mapped, nothing read yet).
        Thread-safe: the loader reads several tensors at once."""
        file = self.files[name]
        with self._lock:
            return self._open(file)

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(file, framework="pt")
            except Exception as exc:
                raise CheckpointError(f"{file} is not a readable safetensors file ({exc}); re-download or re-save it.") from exc
        return self._handles[file]

    def rows(self, name: str, start: int | None = None, stop: int | None = None) -> FileRange | None:
        """Rows [start, stop) of dimension 0 of ``name`` as a file range (read with preadv, see
        loading.file_ranges); None when its dtype is not one torch reads as stored."""
        return self._ranges.rows(self.files[name], name, start, stop)

    def view(self, name: str) -> torch.Tensor | None:
        """``name`` as a CPU tensor viewing the file's memory map (loading.file_ranges.RangeReader.view); None when
        its dtype is not one torch reads as stored."""
        return self._ranges.view(self.files[name], name)

    def close(self) -> None:
        self._handles.clear()
        self._ranges.close()
