"""2 and 3 gloo ranks: model.generate on the hf_tp model gives the unsplit Transformers model's greedy
tokens (single prompt and a left-padded batch), and sampling gives the same tokens on every rank."""

from __future__ import annotations

import pytest
import torch

from conftest import load_reference, run_ranks_once, save_tiny_model, tiny_config

NEW_TOKENS = 64
PAD = 0
MODELS = {
    # SmolLM2's head geometry (9 q / 3 kv, uneven at tp 2), tied embeddings
    "llama_gqa9_tied": ("llama", dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                                      tie_word_embeddings=True)),
    # explicit head_dim, q/k norms; 1 KV head replicated at tp 2 and 3
    "qwen3_kv1": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=1)),
}
SAMPLING = dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, max_new_tokens=32, pad_token_id=PAD)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("generate_dist")
    return {name: str(save_tiny_model(root / name, tiny_config(arch, **overrides), seed=10 + i))
            for i, (name, (arch, overrides)) in enumerate(MODELS.items())}


@pytest.fixture(scope="module")
def prompts() -> dict[str, torch.Tensor]:
    """One prompt of 9 tokens, and a batch of 2 left-padded to 12 (tokenizer-free: ids built by hand)."""
    gen = torch.Generator().manual_seed(1)
    single = torch.randint(1, 101, (1, 9), generator=gen)
    long, short = torch.randint(1, 101, (12,), generator=gen), torch.randint(1, 101, (7,), generator=gen)
    ids = torch.full((2, 12), PAD)
    mask = torch.zeros((2, 12), dtype=torch.long)
    ids[0], mask[0] = long, 1
    ids[1, 5:], mask[1, 5:] = short, 1
    return dict(single=single, batch_ids=ids, batch_mask=mask)


def generate_on_ranks(folders: dict[str, str], prompts: dict, tp_size: int) -> dict:
    """Rank function: greedy and sampled generations of every model."""
    import torch.distributed as dist

    import hf_tp

    out = {}
    for name, folder in folders.items():
        model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp_size, device="cpu", dtype=torch.float32)
        greedy = dict(do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=PAD)
        res = {
            "greedy": model.generate(prompts["single"], **greedy),
            "batch": model.generate(prompts["batch_ids"], attention_mask=prompts["batch_mask"], **greedy),
        }
        torch.manual_seed(1234)
        res["sample_a"] = model.generate(prompts["single"], **SAMPLING)
        torch.manual_seed(1234)
        res["sample_b"] = model.generate(prompts["single"], **SAMPLING)
        # Ranks seeded differently: rank 0's seed is broadcast, so they must still agree.
        torch.manual_seed(1000 + dist.get_rank())
        res["sample_rank_seeds"] = model.generate(prompts["batch_ids"], attention_mask=prompts["batch_mask"], **SAMPLING)
        out[name] = res
        del model
    return out


_RUNS: dict[int, object] = {}


@pytest.fixture(scope="module")
def dist_results(folders, prompts):
    def get(tp_size: int) -> list[dict]:
        return run_ranks_once(_RUNS, generate_on_ranks, tp_size, folders, prompts, tp_size, timeout=300)

    return get


@pytest.fixture(scope="module")
def references(folders, prompts) -> dict[str, dict]:
    """Greedy tokens of the unsplit Transformers model from the same folders."""
    out = {}
    for name, folder in folders.items():
        ref = load_reference(folder)
        greedy = dict(do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=PAD)
        with torch.no_grad():
            out[name] = {
                "greedy": ref.generate(prompts["single"], **greedy),
                "batch": ref.generate(prompts["batch_ids"], attention_mask=prompts["batch_mask"], **greedy),
            }
    return out


@pytest.mark.parametrize("tp_size", [2, 3])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["greedy", "batch"])
def test_greedy_tokens_match_transformers(dist_results, references, prompts, name, tp_size, kind):
    ref = references[name][kind]
    prompt_len = prompts["single" if kind == "greedy" else "batch_ids"].shape[1]
    assert ref.shape[1] == prompt_len + NEW_TOKENS  # eos_token_id is None: all 64 tokens are generated
    for rank, res in enumerate(dist_results(tp_size)):
        got = res[name][kind]
        assert got.shape == ref.shape, (rank, got.shape, ref.shape)
        for row in range(ref.shape[0]):
            mismatch = (got[row] != ref[row]).nonzero()
            assert mismatch.numel() == 0, (
                f"[rank {rank}] {name} tp={tp_size} row {row}: first differing position {int(mismatch[0]) - prompt_len} "
                f"of the new tokens\nhf_tp:        {got[row, prompt_len:].tolist()}\ntransformers: {ref[row, prompt_len:].tolist()}")


@pytest.mark.parametrize("tp_size", [2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_sampling_identical_on_every_rank(dist_results, references, prompts, name, tp_size):
    results = [res[name] for res in dist_results(tp_size)]
    n_prompt = prompts["single"].shape[1]
    first = results[0]
    assert first["sample_a"].shape == (1, n_prompt + SAMPLING["max_new_tokens"])
    assert first["sample_rank_seeds"].shape == (2, prompts["batch_ids"].shape[1] + SAMPLING["max_new_tokens"])
    for rank, res in enumerate(results[1:], start=1):
        for key in ("sample_a", "sample_b", "sample_rank_seeds"):
            assert torch.equal(res[key], first[key]), f"rank {rank} sampled other tokens than rank 0 ({key})"
    # Same seed, same tokens; and it really sampled (32 tokens equal to greedy by chance is ~impossible
    # for these near-uniform random models).
    assert torch.equal(first["sample_a"], first["sample_b"])
    greedy = references[name]["greedy"][:, : first["sample_a"].shape[1]]
    assert not torch.equal(first["sample_a"], greedy)
    assert int(first["sample_a"].max()) < 101 and int(first["sample_a"].min()) >= 0
