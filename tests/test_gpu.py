"""GPU-only checks: the production shapes, CUDA-graph capture of a whole step, no N x V temporaries.

Every test here carries the ``gpu`` marker and skips, saying why, where there is no CUDA device.
The smaller shapes of every backend are covered by test_token_stats.py and test_xflow_step.py,
which run the GPU backends too when a device is present.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from checks import (
    RTOL,
    assert_bitwise_equal,
    check_against_reference,
    check_step,
    make_state,
    random_logits,
    random_policy,
    reference_step,
    require_backend,
)

import mdfast

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU_BACKENDS = ["triton", "cuda"]
PRODUCTION = [(512, 126464), (2048, 152064), (64, 157184)]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("N, V", PRODUCTION)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_token_stats_production_shapes(backend, dtype, N, V, B):
    require_backend(backend)
    if B * N * V * 4 > 6 * 2**30:
        pytest.skip("the float64 reference of this shape needs more host memory than the test allows")
    logits = random_logits((B, N, V), dtype, device="cuda")
    stats = mdfast.token_stats(logits, 4, True, backend=backend)
    check_against_reference(stats, logits, 4, True)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("B", [1, 8])
def test_xflow_step_llada_shape(backend, B):
    require_backend(backend)
    logits, X, t, embedding, m = make_state(
        B, 512, 126464, 4096, device="cuda", logits_dtype=torch.bfloat16, emb_dtype=torch.bfloat16
    )
    policy = random_policy().cuda()
    X_before = X.clone()
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, 0.3, backend=backend)
    want = reference_step(logits, X, t, embedding, m, policy, 0.3, mdfast.FlowConfig())
    check_step(out, want, X_before, embedding, RTOL[torch.bfloat16])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_whole_step_replays_from_a_cuda_graph(backend):
    """Captured once, replayed: the same results as eager calls, and no host synchronisation
    inside (capture would fail on one)."""
    require_backend(backend)
    policy = random_policy().cuda()
    logits, X, t, embedding, m = make_state(2, 256, 32000, 512, device="cuda", logits_dtype=torch.bfloat16)
    rho = torch.zeros(2, device="cuda")
    X0, t0 = X.clone(), t.clone()

    def step():
        return mdfast.xflow_step(
            logits, X, t, embedding, m, policy, rho, inplace=True, backend=backend, check_finite=False
        )

    policy.packed_weights(torch.device("cuda"))  # pack the weights before capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up: compile kernels, allocate
    torch.cuda.current_stream().wait_stream(stream)
    X.copy_(X0), t.copy_(t0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()

    eager_X, eager_t, eager_tokens = [], [], []
    X.copy_(X0), t.copy_(t0)
    for s in range(3):
        rho.fill_(s / 2)
        out = step()
        eager_X.append(X.clone()), eager_t.append(t.clone()), eager_tokens.append(out.tokens.clone())
    X.copy_(X0), t.copy_(t0)
    for s in range(3):
        rho.fill_(s / 2)
        graph.replay()
        torch.cuda.synchronize()
        assert_bitwise_equal("X", X, eager_X[s])
        assert_bitwise_equal("t", t, eager_t[s])
        assert_bitwise_equal("tokens", captured.tokens, eager_tokens[s])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_no_n_by_v_temporaries(backend):
    require_backend(backend)
    B, N, V, E = 1, 512, 126464, 4096
    logits, X, t, embedding, m = make_state(
        B, N, V, E, device="cuda", logits_dtype=torch.bfloat16, emb_dtype=torch.bfloat16
    )
    mdfast.xflow_step(logits, X, t, embedding, m, backend=backend)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    mdfast.xflow_step(logits, X, t, embedding, m, backend=backend)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 8 * N * E * 4, f"{extra} bytes of temporaries (limit 8 N E 4 = {8 * N * E * 4})"


GRAPHABLE = ["xflow", "low_confidence", "maskgit_plus", "topk_margin", "entropy", "rcr", "soft_mask", "threshold"]


def _tiny_native_llada(device):
    from mdfast.models.llada import LLaDAConfig, LLaDAModel

    config = LLaDAConfig.from_dict(
        {
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "mlp_hidden_size": 96,
            "vocab_size": 80,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "include_bias": False,
            "weight_tying": False,
            "scale_logits": False,
            "input_emb_norm": False,
            "max_sequence_length": 128,
            "mask_token_id": 79,
            "eos_token_id": 78,
        }
    )
    torch.manual_seed(0)
    model = LLaDAModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0, 0.3) if p.dim() == 1 else p.normal_(0.0, 2.0 / p.shape[1] ** 0.5)
    return model.to(device)


@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "left_padding"])
@pytest.mark.parametrize("decoder", GRAPHABLE)
def test_generate_replays_whole_steps_from_cuda_graphs(decoder, padded):
    """The native LLaDA body is captured with its step (graphed_blocks > 0, so no host sync
    inside a step) and gives exactly the tokens, and for x-flow exactly the states, of the eager
    steps."""
    model = _tiny_native_llada("cuda")
    ids = torch.randint(0, 78, (3, 9), device="cuda")
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :2] = mask[2, :4] = 0
    kwargs = dict(max_new_tokens=16, steps=8, decoder=decoder, block_length=8, return_history=True)
    eager = mdfast.generate(model, ids, mask, cuda_graph=False, **kwargs)
    graphed = mdfast.generate(model, ids, mask, **kwargs)
    assert eager.graphed_blocks == 0 and graphed.graphed_blocks == 2
    assert torch.equal(graphed.sequences, eager.sequences)
    for a, b in zip(graphed.history, eager.history):
        for name in a:
            assert_bitwise_equal(name, a[name], b[name])


def test_a_model_that_cannot_be_captured_falls_back_with_a_warning():
    """A forward that reads a tensor back to the host cannot be captured: the warm-up step finds
    that out before any capture, one warning, eager steps, the same tokens; the patched model
    remembers it (no second warning), and the process is left as it was (default stream, a
    working allocator, later captures of other models)."""
    model = _tiny_native_llada("cuda")
    forward = model.forward

    def syncing_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        float(out.logits.sum())  # a host synchronisation
        return out

    model.forward = syncing_forward
    mdfast.patch(model)
    ids = torch.randint(0, 78, (2, 5), device="cuda")
    eager = model.mdfast_generate(ids, max_new_tokens=8, steps=8, decoder="xflow", cuda_graph=False)
    with pytest.warns(RuntimeWarning, match="cannot be captured in a CUDA graph"):
        fallback = model.mdfast_generate(ids, max_new_tokens=8, steps=8, decoder="xflow")
    assert fallback.graphed_blocks == 0 and "synchroniz" in model.mdfast_adapter.capture_failure
    assert torch.equal(fallback.sequences, eager.sequences)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        again = model.mdfast_generate(ids, max_new_tokens=8, steps=8, decoder="xflow")
    assert again.graphed_blocks == 0 and torch.equal(again.sequences, eager.sequences)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    torch.cuda.empty_cache()
    other = _tiny_native_llada("cuda")
    assert mdfast.generate(other, ids, max_new_tokens=8, steps=8, decoder="xflow").graphed_blocks == 1


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence"])
def test_generate_with_a_transformers_model_on_cuda(decoder):
    """A transformers masked LM: captured or (if its forward synchronises) eager, the same tokens."""
    transformers = pytest.importorskip("transformers", reason="builds a tiny BERT from transformers classes")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.5,
    )
    model = transformers.BertForMaskedLM(config).eval().cuda()
    ids = torch.randint(5, 64, (2, 6), device="cuda")
    kwargs = dict(max_new_tokens=8, steps=8, decoder=decoder, mask_token_id=4)
    eager = mdfast.generate(model, ids, cuda_graph=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        graphed = mdfast.generate(model, ids, **kwargs)
    assert torch.equal(graphed.sequences, eager.sequences)
