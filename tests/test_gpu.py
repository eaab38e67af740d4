"""GPU-only checks: the production shapes, CUDA-graph capture of a whole step, no N x V temporaries.

Every test here carries the ``gpu`` marker and skips, saying why, where there is no CUDA device.
The smaller shapes of every backend are covered by test_token_stats.py and test_xflow_step.py,
which run the GPU backends too when a device is present. The float64 reference of the production
shapes is evaluated on the GPU itself (``checks.reference_token_stats``, ``reference_step`` with
``on_device``): on the CPU it would take about 10 s per 65 M logits.

The decoding helpers below (``tiny_native_llada``, ``tiny_bert``, ``generate_graphed_and_eager``,
``check_capture_fallback``) take a device: ``bench/gpu_check.py`` runs them on the GPU, and with
``--tiny`` on the CPU, where no step is captured and only the comparisons themselves run.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from checks import (
    RTOL,
    assert_bitwise_equal,
    check_against_reference,
    check_step,
    make_state,
    random_policy,
    reference_step,
    require_backend,
    tiny_bert,
)

import mdfast
from mdfast.decode.graphs import capture_failure
from mdfast.models.llada import LLaDAConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU_BACKENDS = ["triton", "cuda"]
PRODUCTION = [(512, 126464), (2048, 152064), (64, 157184)]
# every decoder that draws no random numbers at temperature 0 (x-flow without sample=True)
GRAPHABLE = [
    "xflow",
    "low_confidence",
    "maskgit_plus",
    "topk_margin",
    "entropy",
    "rcr",
    "soft_mask",
    "threshold",
    "factor",
]


def require_device_memory(nbytes: int) -> None:
    free, _total = torch.cuda.mem_get_info()
    if free < nbytes:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("N, V", PRODUCTION)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_token_stats_production_shapes(backend, dtype, N, V, B):
    """B = 8, N = 2048, V = 152064 has more than 2^31 logits: 64-bit offsets."""
    require_backend(backend)
    element = torch.finfo(dtype).bits // 8
    require_device_memory(B * N * V * (element + 4) + 2**32)  # logits, their float32 draw, the reference
    logits = torch.randn(B, N, V, device="cuda").mul_(3).to(dtype)
    stats = mdfast.token_stats(logits, 4, True, backend=backend)
    check_against_reference(stats, logits, 4, True, on_device=True)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("kind", ["heuristic", "policy", "sampled"])
def test_xflow_step_llada_shape(backend, B, kind):
    """The LLaDA-8B step: N = 512, V = 126464, E = 4096, bf16 logits and embedding; a sampled step
    is checked with its own draws handed to the reference as the action."""
    require_backend(backend)
    logits, X, t, embedding, m = make_state(
        B, 512, 126464, 4096, device="cuda", logits_dtype=torch.bfloat16, emb_dtype=torch.bfloat16
    )
    policy = random_policy().cuda() if kind != "heuristic" else None
    rho = torch.rand(B, device="cuda")
    X_before = X.clone()
    sampling = {"sample": True, "generator": torch.Generator("cuda").manual_seed(7)} if kind == "sampled" else {}
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, backend=backend, **sampling)
    given = {"action": out.action} if kind == "sampled" else {}
    want = reference_step(logits, X, t, embedding, m, policy, rho, mdfast.FlowConfig(), on_device=True, **given)
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

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up: compile kernels, allocate, pack the policy's weights
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


# ---------------------------------------------------------------------------------------------
# Whole decoding steps from CUDA graphs (helpers shared with bench/gpu_check.py)
# ---------------------------------------------------------------------------------------------


def tiny_native_llada(device, seed: int = 0) -> mdfast.LLaDAModel:
    """A 2-layer native LLaDA (grouped-query attention), weights spread wide enough that a wrong
    step changes the tokens; vocabulary 80, mask id 79, EOS 78."""
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
    torch.manual_seed(seed)
    model = mdfast.LLaDAModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0, 0.3) if p.dim() == 1 else p.normal_(0.0, 2.0 / p.shape[1] ** 0.5)
    return model.to(device)


def generate_graphed_and_eager(model, ids, mask=None, **kwargs):
    """``mdfast.generate`` twice with ``return_history``: eagerly (``cuda_graph=False``) and with
    whole steps from CUDA graphs; asserts the same tokens and, after every step, the same decoder
    state bit for bit. Returns (graphed, eager)."""
    eager = mdfast.generate(model, ids, mask, cuda_graph=False, return_history=True, **kwargs)
    graphed = mdfast.generate(model, ids, mask, cuda_graph=True, return_history=True, **kwargs)
    assert eager.graphed_blocks == 0, f"cuda_graph=False replayed {eager.graphed_blocks} block(s) from graphs"
    assert torch.equal(graphed.sequences, eager.sequences), "the graphed steps decoded other tokens"
    assert len(graphed.history) == len(eager.history), "a different number of steps"
    for step, (a, b) in enumerate(zip(graphed.history, eager.history)):
        for name in a:
            assert_bitwise_equal(f"step {step} {name}", a[name], b[name])
    return graphed, eager


def check_llada_replays_eager(device, decoder: str, padded: bool, backend: str = "auto"):
    """The tiny native LLaDA, 2 blocks of 4 steps: graphed steps (on a GPU: at least one block
    replayed from a graph, so no host synchronisation inside a step) give exactly the tokens, and
    for x-flow exactly the states, of the eager steps. Returns the graphed output."""
    model = tiny_native_llada(device)
    ids = torch.randint(0, 78, (3, 9), device=device)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :2] = mask[2, :4] = 0
    graphed, _ = generate_graphed_and_eager(
        model, ids, mask, max_new_tokens=16, steps=8, decoder=decoder, block_length=8, backend=backend
    )
    if torch.device(device).type == "cuda":
        assert graphed.graphed_blocks > 0, "no block was replayed from a CUDA graph"
    return graphed


def check_capture_fallback(device, backend: str = "auto"):
    """A forward that reads a tensor back to the host cannot be captured: the warm-up step finds
    that out before any capture, one warning, eager steps, the same tokens; the patched model
    remembers it (no second warning), and the process is left as it was (default stream, a
    working allocator, later captures of other models). On the CPU nothing is captured: the same
    tokens, no warning."""
    on_gpu = torch.device(device).type == "cuda"
    model = tiny_native_llada(device)
    forward = model.forward

    @functools.wraps(forward)  # keeps forward's signature: mdfast.patch looks for inputs_embeds
    def syncing_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        float(out.logits.sum())  # a host synchronisation
        return out

    model.forward = syncing_forward
    mdfast.patch(model, backend=backend)
    ids = torch.randint(0, 78, (2, 5), device=device)
    eager = model.mdfast_generate(ids, max_new_tokens=8, steps=8, decoder="xflow", cuda_graph=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        fallback = model.mdfast_generate(ids, max_new_tokens=8, steps=8, decoder="xflow")
    capture_warnings = [w for w in caught if "cannot be captured in a CUDA graph" in str(w.message)]
    assert len(capture_warnings) == (1 if on_gpu else 0), [str(w.message) for w in caught]
    assert fallback.graphed_blocks == 0 and torch.equal(fallback.sequences, eager.sequences)
    if on_gpu:
        assert "synchroniz" in (capture_failure(model) or "")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        again = model.mdfast_generate(ids, max_new_tokens=8, steps=8, decoder="xflow")
    assert again.graphed_blocks == 0 and torch.equal(again.sequences, eager.sequences)
    if on_gpu:
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        torch.cuda.empty_cache()
        other = tiny_native_llada(device)
        later = mdfast.generate(other, ids, max_new_tokens=8, steps=8, decoder="xflow", backend=backend)
        assert later.graphed_blocks > 0, "a later model was not captured"


def check_transformers_model(device, decoder: str, backend: str = "auto"):
    """A transformers masked LM: captured or (if its forward synchronises) eager after a warning,
    the same tokens and states as eager steps. Returns the graphed output."""
    model = tiny_bert(device=device)
    ids = torch.randint(5, 64, (2, 6), device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        graphed, _ = generate_graphed_and_eager(
            model, ids, max_new_tokens=8, steps=8, decoder=decoder, mask_token_id=4, backend=backend
        )
    return graphed


@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "left_padding"])
@pytest.mark.parametrize("decoder", GRAPHABLE)
def test_generate_replays_whole_steps_from_cuda_graphs(decoder, padded):
    check_llada_replays_eager("cuda", decoder, padded)


def test_a_model_that_cannot_be_captured_falls_back_with_a_warning():
    check_capture_fallback("cuda")


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence"])
def test_generate_with_a_transformers_model_on_cuda(decoder):
    pytest.importorskip("transformers", reason="builds a tiny BERT from transformers classes")
    check_transformers_model("cuda", decoder)
