"""SPEC 7 in SPMD mode: bad input gets one clear exception, raised on every rank, and no rank hangs.

Each rank runs every case in turn and records what it raised; a rank left waiting in a collective
would make the whole run time out (run_ranks kills it and fails). After the input errors, the same
model must still work, which shows that the ranks are still in step.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
import transformers

import hf_tp

from conftest import run_ranks, save_tiny_model, tiny_config

VOCAB, MAX_POS = 101, 128


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("errors")
    good = save_tiny_model(root / "good", tiny_config("llama"), seed=3)

    corrupt = root / "corrupt"
    shutil.copytree(good, corrupt)
    shard = sorted(corrupt.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated download

    missing = root / "missing_shard"
    shutil.copytree(good, missing)
    sorted(missing.glob("model-*.safetensors"))[-1].unlink()

    bin_only = root / "bin_only"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.config.save_pretrained(bin_only)
    torch.save(model.state_dict(), bin_only / "pytorch_model.bin")

    # A causal LM Transformers knows, with no hf_tp policy and no base_model_tp_plan.
    unknown = root / "biogpt"
    config = transformers.BioGptConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=MAX_POS)
    assert not getattr(config, "base_model_tp_plan", None)
    transformers.BioGptForCausalLM(config).save_pretrained(unknown)

    bad_heads = save_tiny_model(root / "heads_4q_2kv", tiny_config("llama", num_attention_heads=4, num_key_value_heads=2))
    return {"good": str(good), "corrupt": str(corrupt), "corrupt_shard": shard.name, "missing": str(missing),
            "missing_shard": sorted(good.glob("model-*.safetensors"))[-1].name, "bin_only": str(bin_only),
            "unknown": str(unknown), "bad_heads": str(bad_heads)}


def error_cases(paths: dict[str, str], names: list[str]) -> dict:
    """Rank function: run each named case; record the exception it raised (None if none)."""
    import os

    import torch.distributed as dist

    import hf_tp

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])

    def load(folder, **kwargs):
        kwargs.setdefault("tp_size", world)
        return hf_tp.AutoModelForCausalLM.from_pretrained(folder, device="cpu", dtype=torch.float32, **kwargs)

    state = {}

    def model():
        if "model" not in state:
            state["model"] = load(paths["good"])
        return state["model"]

    ids = torch.tensor([[5, 17, 3, 90, 42]])  # + rank stays inside the vocabulary
    cases = {
        "tp_size_0": lambda: load(paths["good"], tp_size=0),
        "tp_size_negative": lambda: load(paths["good"], tp_size=-1),
        "tp_size_str": lambda: load(paths["good"], tp_size="2"),
        # True == 1, but validate_tp_size rejects bools: it must not silently load an unsplit model.
        "tp_size_bool": lambda: load(paths["good"], tp_size=True),
        "world_size_mismatch": lambda: load(paths["good"], tp_size=world + 1),
        "device_map": lambda: load(paths["good"], device_map="auto"),
        "quantization_config": lambda: load(paths["good"], quantization_config={"load_in_8bit": True}),
        "unknown_architecture": lambda: load(paths["unknown"]),
        "bin_only": lambda: load(paths["bin_only"]),
        "missing_shard": lambda: load(paths["missing"]),
        "corrupt_shard": lambda: load(paths["corrupt"]),
        "heads_not_splittable": lambda: load(paths["bad_heads"]),
        "forward_id_too_large": lambda: model()(torch.tensor([[5, VOCAB, 3]])),
        "forward_id_negative": lambda: model()(torch.tensor([[5, -1, 3]])),
        "generate_id_too_large": lambda: model().generate(torch.tensor([[5, VOCAB + 7]]), max_new_tokens=4),
        "prompt_too_long": lambda: model().generate(torch.ones((1, MAX_POS + 1), dtype=torch.long), max_new_tokens=4),
        "forward_prompt_too_long": lambda: model()(torch.ones((1, MAX_POS + 1), dtype=torch.long)),
        "forward_inputs_differ": lambda: model()(ids + rank),
        "generate_args_differ": lambda: model().generate(ids, max_new_tokens=4 + rank, do_sample=False),
    }
    out = {}
    for name in names:
        try:
            cases[name]()
            out[name] = None
        except Exception as exc:  # noqa: BLE001 - the exception is the result
            out[name] = exc
    # Still usable and in step after the errors: a real forward and generate on every rank.
    if "model" in state:
        with torch.no_grad():
            out["after"] = (state["model"](ids).logits, state["model"].generate(ids, max_new_tokens=3, do_sample=False))
    dist.barrier()
    return out


# case -> (exception type, patterns the message must contain, each a regex)
EXPECTED = {
    "tp_size_0": (ValueError, [r"tp_size must be a positive integer, got 0"]),
    "tp_size_negative": (ValueError, [r"tp_size must be a positive integer, got -1"]),
    "tp_size_str": (ValueError, [r"tp_size must be a positive integer, got '2'"]),
    "tp_size_bool": (ValueError, [r"tp_size must be a positive integer, got True"]),
    "world_size_mismatch": (ValueError, [r"tp_size={tp_wrong}\b", r"WORLD_SIZE={world}\b",
                                         r"--nproc-per-node {tp_wrong}\b", r"tp_size={world}\b"]),
    "device_map": (ValueError, [r"device_map", r"tp_size", r"places every weight itself", r"device="]),
    "quantization_config": (ValueError, [r"quantization_config", r"tp_size", r"TPConfig\(weights='fp8'\)"]),
    "unknown_architecture": (hf_tp.PolicyError, [r"'biogpt'", r"llama", r"register_policy"]),
    "bin_only": (hf_tp.CheckpointError, [r"\.bin", r"safetensors", r"save_pretrained"]),
    "missing_shard": (hf_tp.CheckpointError, [r"missing", "{missing_shard}"]),
    "corrupt_shard": (hf_tp.CheckpointError, ["{corrupt_shard}", r"corrupt|re-download|re-save"]),
    "heads_not_splittable": (hf_tp.ShardingError, [r"heads_4q_2kv", r"tp_size=3", r"num_key_value_heads=2",
                                                   r"Valid tp_size for this model: 1, 2, 4\b"]),
    "forward_id_too_large": (ValueError, [rf"token id {VOCAB}\b", rf"\[0, {VOCAB}\)"]),
    "forward_id_negative": (ValueError, [r"token id -1\b", rf"\[0, {VOCAB}\)"]),
    "generate_id_too_large": (ValueError, [rf"token id {VOCAB + 7}\b", rf"\[0, {VOCAB}\)"]),
    "prompt_too_long": (ValueError, [rf"\b{MAX_POS + 1} tokens", rf"\b{MAX_POS}\b", r"max_position_embeddings"]),
    "forward_prompt_too_long": (ValueError, [rf"\b{MAX_POS + 1} tokens", rf"\b{MAX_POS}\b", r"max_position_embeddings"]),
    "forward_inputs_differ": (ValueError, [r"differ across ranks", r"same inputs"]),
    "generate_args_differ": (ValueError, [r"generate\(\)", r"differ across ranks"]),
}
# 2 ranks: everything except the head split, which 4 q / 2 kv heads allow at tp 2.
CASES_2 = [c for c in EXPECTED if c != "heads_not_splittable"]
# 3 ranks: the head split, plus the argument and checkpoint cases once more with an odd world size.
CASES_3 = ["heads_not_splittable", "world_size_mismatch", "tp_size_0", "unknown_architecture", "bin_only",
           "missing_shard", "corrupt_shard", "forward_id_too_large", "forward_inputs_differ"]

_RUNS: dict[int, object] = {}


@pytest.fixture(scope="module")
def dist_results(paths):
    def get(world: int) -> list[dict]:
        if world not in _RUNS:
            try:
                _RUNS[world] = run_ranks(error_cases, world, paths, CASES_2 if world == 2 else CASES_3, timeout=180)
            except AssertionError as exc:
                _RUNS[world] = exc
        if isinstance(_RUNS[world], AssertionError):
            raise _RUNS[world]
        return _RUNS[world]

    return get


@pytest.mark.parametrize("world,case", [(2, c) for c in CASES_2] + [(3, c) for c in CASES_3])
def test_error_on_every_rank(dist_results, paths, world, case):
    kind, patterns = EXPECTED[case]
    for rank, res in enumerate(dist_results(world)):
        exc = res[case]
        assert exc is not None, f"[rank {rank}] {case}: nothing was raised"
        assert isinstance(exc, kind), f"[rank {rank}] {case}: expected {kind.__name__}, got {type(exc).__name__}: {exc}"
        for pattern in patterns:
            pattern = pattern.format(**paths, world=world, tp_wrong=world + 1)
            assert re.search(pattern, str(exc)), f"[rank {rank}] {case}: {pattern!r} not in message:\n{exc}"


@pytest.mark.parametrize("world", [2, 3])
def test_model_still_usable_after_input_errors(dist_results, paths, world):
    results = dist_results(world)
    logits, tokens = results[0]["after"]
    assert logits.shape == (1, 5, VOCAB) and torch.isfinite(logits).all()
    assert tokens.shape == (1, 8)
    for res in results[1:]:
        assert torch.equal(res["after"][0], logits) and torch.equal(res["after"][1], tokens)


def fails_on_one_rank(paths: dict[str, str]) -> dict:
    """Rank function: rank 1 alone gets a bad argument (a checkpoint folder missing on its host, a token
    id outside the vocabulary, a prompt too long); rank 0's is valid. Recorded per case, in order."""
    import os

    import hf_tp

    rank = int(os.environ["RANK"])
    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = None
        except Exception as exc:  # noqa: BLE001 - the exception is the result
            out[name] = exc

    folder = paths["good"] if rank == 0 else paths["good"] + "_not_on_this_host"
    attempt("folder_missing_on_one_rank", lambda: hf_tp.AutoModelForCausalLM.from_pretrained(
        folder, tp_size=2, device="cpu", dtype=torch.float32))
    model = hf_tp.AutoModelForCausalLM.from_pretrained(paths["good"], tp_size=2, device="cpu", dtype=torch.float32)
    ok = torch.tensor([[5, 17, 3]])
    bad = {"vocab": torch.tensor([[5, VOCAB, 3]]), "length": torch.ones((1, MAX_POS + 1), dtype=torch.long)}
    for kind, ids in bad.items():
        attempt(f"{kind}_on_one_rank", lambda: model.generate(ids if rank == 1 else ok, max_new_tokens=4))
    return out


ONE_RANK = {
    "folder_missing_on_one_rank": (hf_tp.CheckpointError, [r"_not_on_this_host"]),
    "vocab_on_one_rank": (ValueError, [rf"token id {VOCAB}\b"]),
    "length_on_one_rank": (ValueError, [rf"\b{MAX_POS + 1} tokens"]),
}


@pytest.fixture(scope="module")
def one_rank_results(paths):
    try:
        return run_ranks(fails_on_one_rank, 2, paths, timeout=90)
    except AssertionError as exc:
        return exc


@pytest.mark.parametrize("case", ONE_RANK)
def test_bad_input_on_one_rank_raises_everywhere(one_rank_results, case):
    """SPEC 7 / STYLE 2.6: one exception, of one kind, on every rank; checks run identically on every
    rank before any collective, so a rank whose own input passed never waits for one that failed."""
    if isinstance(one_rank_results, AssertionError):
        raise one_rank_results
    kind, patterns = ONE_RANK[case]
    for rank, res in enumerate(one_rank_results):
        exc = res[case]
        assert isinstance(exc, kind), f"[rank {rank}] {case}: expected {kind.__name__} on every rank, got {exc!r}"
        for pattern in patterns:
            assert re.search(pattern, str(exc)), f"[rank {rank}] {case}: {pattern!r} not in message:\n{exc}"
