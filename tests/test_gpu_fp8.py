"""FP8 weights kept on the GPU end to end: a block-FP8 checkpoint loaded with TPConfig(fp8_weights="keep") on
one GPU (a TP group of one), decoded by hf_tp's loop (compile + CUDA graph, the Triton FP8 kernel inside), and
judged against the unsplit Transformers model in fp32 with the same dequantized weights. Skipped without a
CUDA GPU of compute capability 8.9 or above."""

import pytest
import torch

from conftest import save_tiny_model, tiny_config
from fp8_checkpoints import dequantized_reference, write_block_fp8, write_channel_fp8

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability(0) < (8, 9),
                                 reason="needs a CUDA GPU with FP8 (compute capability 8.9+); none visible here")]


# (prompt length, TPConfig.fp8_activations, format): 12 tokens (two rows): every call at decode sizes; 60: the
# prompt's 120 rows through the prefill kernel that reads the FP8 weight once; 80: the prompt's 160 rows through
# the FP8-activation kernel (with TPConfig.fp8_activations) or dequantize + cuBLAS; "channel-split": per-channel
# weights, x as two FP8 terms at prefill and decode sizes (fp8_triton.PREFILL_TWO_TERM_MAX_M and
# DECODE_TWO_TERM_MAX_M raised, in the captured loop too), held to the tokens.
# "block-pdl": the 12-token case with TPConfig(pdl=True), as FP8 layers run from the rank of tp 2 on (resolve_pdl).
# "block-glu": one prompt (the gate/up GEMV keeps K whole at one row) with prologue_pass.FP8_GLU_EPILOGUE: the MLP's
# activation made in the FP8 gate/up GEMM's epilogue, checked to have been rewritten.
# "channel-8b-tp1" / "channel-8b-r2": one layer of Llama-3-8B's widths at tp 1 and of a rank of tp 2 (per channel,
# one prompt), so that batch-1 decode runs the decode GEMM configs of those shapes: the measured table's, and on a
# GPU model with its own entries (gemv_table.DEVICE_TABLES: the SXM H100) those, checked to be in use.
CASES = [(12, False, "block"), (60, False, "block"), (80, False, "block"), (80, True, "block"),
         (80, False, "channel-split"), (12, False, "block-pdl"), (12, False, "block-glu"),
         (12, False, "channel-8b-tp1"), (12, False, "channel-8b-r2")]
WIDTHS_8B = {"channel-8b-tp1": dict(num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336),
             "channel-8b-r2": dict(num_attention_heads=16, num_key_value_heads=4, intermediate_size=7168)}


@pytest.mark.parametrize("prompt_len,fp8_activations,fmt", CASES)
def test_block_fp8_kept_on_gpu_decodes_the_fp32_reference_tokens(tmp_path, monkeypatch, prompt_len, fp8_activations,
                                                                  fmt):
    from hf_tp.config import TPConfig
    from hf_tp.assembly import load_parallel_model
    from hf_tp.kernels import fp8_triton
    from hf_tp.parallel.comm import TPGroup

    # 320 and 384 are not multiples of 128: the last K-block of every GEMM is partial.
    config = tiny_config("llama", hidden_size=320, intermediate_size=384, num_attention_heads=10,
                         num_key_value_heads=5, head_dim=32)
    if fmt in WIDTHS_8B:
        config = tiny_config("llama", hidden_size=4096, head_dim=128, num_hidden_layers=1, **WIDTHS_8B[fmt])
    src = save_tiny_model(tmp_path / "bf", config, max_shard_size=None)
    pdl = fmt == "block-pdl"
    rewritten = []
    if fmt == "block-glu":
        from hf_tp.kernels import prologue_pass

        monkeypatch.setattr(prologue_pass, "FP8_GLU_EPILOGUE", True)
        import torch._inductor.config as inductor_config

        monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # the pass runs, not a cached graph
        real = prologue_pass.fuse_glu_into_gate_up
        monkeypatch.setattr(prologue_pass, "fuse_glu_into_gate_up", lambda graph: rewritten.append(real(graph))
                            or rewritten[-1])
    if fmt in ("block", "block-pdl", "block-glu"):
        folder = write_block_fp8(src, tmp_path / "fp8")
    elif fmt in WIDTHS_8B:
        folder = write_channel_fp8(src, tmp_path / "fp8")
    else:
        folder = write_channel_fp8(src, tmp_path / "fp8")
        monkeypatch.setattr(fp8_triton, "PREFILL_TWO_TERM_MAX_M", 1 << 20)
        monkeypatch.setattr(fp8_triton, "DECODE_TWO_TERM_MAX_M", fp8_triton.DOT_MAX_M)
        launched = []  # (terms, rows) of the FP8 x FP8 calls: the two-term path must have run, not only be allowed
        launch = fp8_triton.launch_prefill_fp8
        monkeypatch.setattr(fp8_triton, "launch_prefill_fp8",
                            lambda x2, *a, terms=1, **k: launched.append((terms, x2.shape[0]))
                            or launch(x2, *a, terms=terms, **k))
    device = torch.device("cuda", 0)
    reference = dequantized_reference(folder, tmp_path / "deq").to(device)
    ours = load_parallel_model(str(folder), TPGroup(0, 1, device), dtype=torch.bfloat16, progress=False,
                               tp_config=TPConfig(fp8_weights="auto", fast_decode=True,
                                                  fp8_activations=fp8_activations, pdl=pdl or None))
    assert ours.hf_tp_config.fp8_weights == "keep" and ours.hf_tp_config.fp8_activations is fp8_activations
    assert ours.hf_tp_config.pdl is pdl  # tp 1 with FP8 layers: off unless asked
    q = ours.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.float8_e4m3fn
    assert q.shared_input is not None and q.shared_input.scale is not None  # q/k/v as one FP8 GEMM (TPConfig.fuse)
    assert q.shared_input.fp8_activations is fp8_activations
    assert ours.model.layers[0].self_attn.o_proj.fp8_activations is fp8_activations

    chosen = {}  # (M, N, K) -> the config each decode GEMM call was launched with
    if fmt in WIDTHS_8B:
        from hf_tp.kernels import gemv_triton as gt

        choose = gt.choose
        monkeypatch.setattr(gt, "choose", lambda M, N, K, *a, **k: chosen.setdefault((M, N, K), choose(M, N, K, *a, **k)))
    batch = 1 if fmt in ("block-glu", *WIDTHS_8B) else 2
    prompt = torch.randint(3, config.vocab_size, (batch, prompt_len),
                           generator=torch.Generator().manual_seed(0)).to(device)
    out = ours.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24,
                        do_sample=False, pad_token_id=0)
    assert ours._hf_tp_static_decoder.use_graphs and ours._hf_tp_static_decoder.sessions  # the captured loop ran
    if fmt in WIDTHS_8B:  # one-row calls ran this GPU's own entries (gemv_table.DEVICE_TABLES) where it has them
        from hf_tp.kernels import gemv_table

        own = gemv_table.DEVICE_TABLES.get(gt.device_table_key(torch.cuda.get_device_name(device)), {})
        inter, heads, kv = config.intermediate_size, config.num_attention_heads, config.num_key_value_heads
        for N, K in (((heads + 2 * kv) * 128, 4096), (4096, heads * 128), (2 * inter, 4096), (4096, inter)):
            assert (1, N, K) in chosen, (N, K, sorted(chosen))
            entry = own.get(("gemv", 1, N, K, "channel"), own.get(("gemv", 1, N, K)))  # these cases: per channel
            if entry is not None:
                assert chosen[(1, N, K)][1] == dict(entry), (N, K, chosen[(1, N, K)])
    if fmt == "block-glu":
        assert sum(rewritten) >= config.num_hidden_layers, rewritten  # every layer's MLP, in the compiled step
    new = out[:, prompt.shape[1]:]
    if fp8_activations:
        # FP8 activations trade accuracy for speed (each GEMM about 2.6 % off on random data; gpu_check's phi3
        # prompt logits measured 0.14 from the bf16 reference): the prompt's logits must stay near the fp32
        # reference's (a model without its scales, or garbage activations, is at about 1), not the tokens.
        with torch.no_grad():
            ref_logits = reference(prompt).logits.float()
            ours_logits = ours(input_ids=prompt).logits.float()
        rel = ((ours_logits - ref_logits).norm() / ref_logits.norm()).item()
        assert rel < 0.25, rel
        return
    # Every token the FP8 model chose must be the fp32 reference's argmax on the same prefix, or a near-tie:
    # its fp32 logit within bf16 noise (2 % of the logits' range, the kernel's bf16 activations) of the best.
    with torch.no_grad():
        logits = reference(out).logits[:, prompt.shape[1] - 1:-1].float()
    chosen = logits.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    best = logits.max(-1).values
    span = logits.amax(-1) - logits.amin(-1)
    assert torch.all(best - chosen <= 0.02 * span), (best - chosen) / span
    exact = (logits.argmax(-1) == new).float().mean().item()
    assert exact >= 0.9, exact
    if fmt == "channel-split":  # the prompt's 160 rows and the decode steps' 2 rows, every call in two terms
        assert {terms for terms, _ in launched} == {2} and {rows for _, rows in launched} >= {160, 2}, launched
