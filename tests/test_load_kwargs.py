"""from_pretrained keyword arguments that Transformers honours, at tp_size 2: each gives the model
Transformers gives for the same arguments (same logits, dtype, config, generation config, loading
info), or the error Transformers raises. SPMD ranks (run_ranks) and the single-controller handle.

One spawn runs every SPMD case in turn; each case is then checked by its own test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import hf_tp
from conftest import load_reference, rel_err, run_ranks_once, save_tiny_model, tiny_config

# fp32 TP vs unsplit: the split matmuls and the all-reduce only change the summation order (SPEC 4.5).
RTOL = 1e-5
IDS = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
HUB_ID, HUB_COMMIT = "org/tiny-llama", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """base: sharded fp32 llama. variant: the same weights saved as variant "v1" only. bf16_nodtype:
    bf16 weights whose config.json names no dtype. hub: a hub cache (cache_dir) holding base as HUB_ID."""
    root = tmp_path_factory.mktemp("load_kwargs")
    base = save_tiny_model(root / "base", tiny_config("llama"), seed=0)
    model = load_reference(base)
    model.save_pretrained(root / "variant", variant="v1", max_shard_size="50KB")
    model.to(torch.bfloat16).save_pretrained(root / "bf16_nodtype", max_shard_size="50KB")
    config = json.loads((root / "bf16_nodtype" / "config.json").read_text())
    del config["dtype"]
    (root / "bf16_nodtype" / "config.json").write_text(json.dumps(config))
    repo = root / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    shutil.copytree(base, repo / "snapshots" / HUB_COMMIT)
    return {"base": str(base), "variant": str(root / "variant"), "bf16_nodtype": str(root / "bf16_nodtype"),
            "hub": str(root / "hub")}


def _config(path, **edits):
    config = transformers.AutoConfig.from_pretrained(path)
    for key, value in edits.items():
        setattr(config, key, value)
    return config


F32 = dict(dtype=torch.float32)

# name -> (folder key or HUB_ID, kwargs for both Transformers and hf_tp). Built inside the ranks
# from the folders, since config objects need the folder.
CASES = {
    "low_cpu_mem_usage": ("base", lambda f: dict(low_cpu_mem_usage=True, **F32)),
    "use_safetensors": ("base", lambda f: dict(use_safetensors=True, **F32)),
    "variant": ("variant", lambda f: dict(variant="v1", **F32)),
    "generation_config": ("base", lambda f: dict(generation_config=transformers.GenerationConfig(max_new_tokens=3), **F32)),
    "output_loading_info": ("base", lambda f: dict(output_loading_info=True, **F32)),
    # Fewer layers than the checkpoint: Transformers loads the first and reports the rest as unexpected.
    "fewer_layers_info": ("base", lambda f: dict(config=_config(f["base"], num_hidden_layers=1), output_loading_info=True,
                                                 **F32)),
    "default_dtype_from_weights": ("bf16_nodtype", lambda f: dict()),
    # local_files_only: this test process is not offline, and the reference must not try the network.
    "hub_id": (HUB_ID, lambda f: dict(cache_dir=f["hub"], local_files_only=True, **F32)),
    "path_object": ("base", lambda f: dict(**F32)),
    # Transformers' AutoModel ignores a config= that is not a config object (here another folder's path).
    "config_path_string": ("base", lambda f: dict(config=f["bf16_nodtype"], **F32)),
    # Errors Transformers raises too.
    "config_object_and_override": ("base", lambda f: dict(config=_config(f["base"]), rms_norm_eps=1e-2, **F32)),
    "variant_absent": ("base", lambda f: dict(variant="v1", **F32)),
}


def _location(name, folders):
    where, kwargs = CASES[name]
    path = where if where == HUB_ID else folders[where]
    return (Path(path) if name == "path_object" else path), kwargs(folders)


def _summary(out, config_given=None) -> dict:
    model, info = out if isinstance(out, tuple) else (out, None)
    with torch.no_grad():
        logits = model(IDS).logits.float()
    return dict(logits=logits, dtype=model.dtype, config_dtype=model.config.dtype, layers=model.config.num_hidden_layers,
                name_or_path=model.config.name_or_path, max_new_tokens=model.generation_config.max_new_tokens,
                info=info, config_is_callers=model.config is config_given)


def _rank_all(folders):
    out = {}
    for name in CASES:
        path, kwargs = _location(name, folders)
        given = kwargs.get("config") if isinstance(kwargs.get("config"), transformers.PretrainedConfig) else None
        before = given.to_dict() if given is not None else None
        try:
            got = _summary(hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", **kwargs), given)
            got["callers_config_unchanged"] = before is None or given.to_dict() == before
            out[name] = got
        except Exception as exc:  # noqa: BLE001 - compared with Transformers' error in the test
            out[name] = dict(error=exc)
    return out


_RUNS: dict = {}


@pytest.fixture(scope="module")
def spmd(folders):
    return run_ranks_once(_RUNS, _rank_all, 2, folders)


def _reference(name, folders):
    path, kwargs = _location(name, folders)
    try:
        given = kwargs.get("config") if isinstance(kwargs.get("config"), transformers.PretrainedConfig) else None
        return _summary(transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs), given)
    except Exception as exc:  # noqa: BLE001
        return dict(error=exc)


def _check_same(got: dict, ref: dict) -> None:
    if "error" in ref:
        assert "error" in got, f"Transformers raises {ref['error']!r}; hf_tp loaded a model"
        # Transformers' file errors are OSError subclasses (FileNotFoundError, ...): any OSError will do.
        expected = OSError if isinstance(ref["error"], OSError) else type(ref["error"])
        assert isinstance(got["error"], expected), f"Transformers raises {ref['error']!r}, hf_tp {got['error']!r}"
        return
    assert "error" not in got, f"Transformers loads; hf_tp raised {got['error']!r}"
    assert got["dtype"] == ref["dtype"] and got["config_dtype"] == ref["config_dtype"]
    tol = RTOL if ref["dtype"] == torch.float32 else 1e-2
    assert rel_err(got["logits"], ref["logits"]) <= tol
    for key in ("layers", "name_or_path", "max_new_tokens", "info", "config_is_callers"):
        assert got[key] == ref[key], (key, got[key], ref[key])


@pytest.mark.parametrize("name", CASES)
def test_spmd_matches_transformers(spmd, folders, name):
    for rank, results in enumerate(spmd):
        got = results[name]
        _check_same(got, _reference(name, folders))
        assert got.get("callers_config_unchanged", True), f"rank {rank}: from_pretrained edited the caller's config object"


def test_use_safetensors_false_is_refused_before_loading(folders):
    """Transformers then reads pickle weights, which hf_tp never does: a clear error, before any process starts."""
    with pytest.raises(ValueError, match="use_safetensors=False"):
        hf_tp.AutoModelForCausalLM.from_pretrained(folders["base"], tp_size=2, device="cpu", use_safetensors=False)


def test_handle_takes_the_same_keywords(folders):
    """The single-controller handle: variant, generation_config, output_loading_info, a config object
    (left as the caller passed it) and Transformers' ignored keywords, in one start."""
    config = _config(folders["variant"])
    before = config.to_dict()
    kwargs = dict(variant="v1", generation_config=transformers.GenerationConfig(max_new_tokens=3), low_cpu_mem_usage=True,
                  use_safetensors=True, output_loading_info=True, **F32)
    ref, ref_info = transformers.AutoModelForCausalLM.from_pretrained(folders["variant"], config=_config(folders["variant"]),
                                                                      **kwargs)
    model, info = hf_tp.AutoModelForCausalLM.from_pretrained(folders["variant"], tp_size=2, device="cpu", config=config,
                                                             **kwargs)
    with model:
        assert rel_err(model(IDS).logits, ref(IDS).logits) <= RTOL
        assert info == ref_info
        assert model.generation_config.max_new_tokens == 3
        assert model.config is not config and config.to_dict() == before


def test_handle_default_dtype_from_weights(folders):
    """No dtype argument and no dtype in config.json: Transformers 5 takes the weights' dtype (bf16 here)."""
    ref = transformers.AutoModelForCausalLM.from_pretrained(folders["bf16_nodtype"])
    with hf_tp.AutoModelForCausalLM.from_pretrained(folders["bf16_nodtype"], tp_size=2, device="cpu") as model:
        assert ref.dtype == torch.bfloat16
        assert model.dtype == torch.bfloat16 and model.config.dtype == torch.bfloat16
        assert rel_err(model(IDS).logits.float(), ref(IDS).logits.float()) <= 1e-2
