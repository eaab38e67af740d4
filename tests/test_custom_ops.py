"""mdfast's custom operators (mdfast/custom_ops.py): torch.library's opcheck, fake shapes, autograd, torch.compile.

Every op of ``custom_ops.OPS`` exists as ``torch.ops.mdfast.<name>`` and passes ``torch.library.opcheck``
(schema and mutations, autograd registration, fake kernel against the real one, AOT dispatch) on each
backend that runs here, on the CPU and on CUDA where there is one. The public functions in ``mdfast.ops``
run under FakeTensorMode with the exact shapes and dtypes. Gradients through the registered formulas
equal the torch reference's (autograd of ``mdfast.reference``), and pass ``gradcheck`` in float64.
One whole decoding step (the native LLaDA body's forward on ``inputs_embeds``, then the x-flow step) and a
cached step (``forward_cached`` then the x-flow step) compile with ``fullgraph=True`` (no graph break) and
give eager's tokens, step after step: with the "aot_eager" backend here (the dispatcher, functionalization
and the fake kernels, no code generation); the inductor variant is marked slow.
"""

from __future__ import annotations

import pytest
import torch
from checks import require_backend
from test_llada import tiny_llada
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.library import opcheck

from mdfast import backends, custom_ops, ops, reference
from mdfast.config import FlowConfig

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]
STEP_BACKENDS = {"cpu": ("torch", "cpu"), "cuda": ("torch", "cuda", "triton")}
BODY_BACKENDS = {"cpu": ("torch",), "cuda": ("torch", "triton")}


def runs(name: str, device: str) -> bool:
    """Whether backend ``name`` runs on ``device``'s tensors here (a GPU backend that does not load fails)."""
    if name == "torch":
        return True
    return require_backend(name) == device


def scalars(config: FlowConfig = FlowConfig()) -> list[float]:
    """The x-flow op's ``scalars`` for ``config`` without a policy."""
    values = (config.a_min, config.a_max, config.reedit_margin, config.commit_threshold, config.k, config.kummer_terms)
    return [float(v) for v in (*values, 0, 0.0, 0.0)]


def step_inputs(device: str, B: int = 2, N: int = 5, V: int = 40, E: int = 8):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, N, V, generator=g)
    X, t = torch.randn(B, N, E, generator=g), torch.rand(B, N, generator=g)
    embedding, mask = torch.randn(V, E, generator=g), torch.randn(E, generator=g)
    rho = torch.rand(B, generator=g)
    return [x.to(device) for x in (logits, X, t, embedding, mask, rho)]


def test_every_op_is_registered():
    assert set(custom_ops.OPS) == {
        "token_stats",
        "xflow_step_",
        "rms_norm",
        "add_rms_norm",
        "rope",
        "rope_",
        "swiglu",
        "cached_attention",
    }
    for name in custom_ops.OPS:
        op = getattr(torch.ops.mdfast, name).default
        assert isinstance(op, torch._ops.OpOverload)
        assert torch.Tag.pt2_compliant_tag in op.tags
    mutated = {
        name: [a.name for a in getattr(torch.ops.mdfast, name).default._schema.arguments if a.is_write]
        for name in custom_ops.OPS
    }
    want = {"xflow_step_": ["X", "t"], "rope_": ["x"], "cached_attention": ["keys", "values"]}
    assert mutated == {name: want.get(name, []) for name in custom_ops.OPS}


# ---------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("full_entropy", [False, True])
def test_opcheck_token_stats(device, full_entropy):
    logits = step_inputs(device)[0]
    for name in STEP_BACKENDS[device]:
        if runs(name, device):
            opcheck(torch.ops.mdfast.token_stats.default, (logits, 4, full_entropy, name))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("given", [False, True])
def test_opcheck_xflow_step(device, given):
    logits, X, t, embedding, mask, rho = step_inputs(device)
    B, N = t.shape
    bad = torch.zeros(1, dtype=torch.int32, device=device)
    for name in STEP_BACKENDS[device]:
        if not runs(name, device):
            continue
        stats, action = [], None
        if given:  # a sampled step: the actions and the statistics they were drawn from
            out = torch.ops.mdfast.token_stats.default(logits, 4, False, name)
            stats = [out[0], out[1][..., 0].contiguous(), out[3]]
            action = torch.full((B, N), 0.5, device=device)
        args = (logits, X.clone(), t.clone(), embedding, mask, rho, None, action, stats, bad, scalars(), name)
        opcheck(torch.ops.mdfast.xflow_step_.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_body_ops(device):
    """RMSNorm (with and without the residual add), RoPE (new and in place, with and without tables), SwiGLU."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    g = torch.Generator().manual_seed(1)

    def randn(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_(grad)

    tables = reference.rope_tables(torch.arange(4, device=device), 8, 10000.0, dtype)
    for name in BODY_BACKENDS[device]:
        if not runs(name, device):
            continue
        grad = name == "torch"  # the Triton kernels run forward only ("auto" takes the reference for gradients)
        x, update, weight = randn(2, 3, 8, grad=grad), randn(2, 3, 8, grad=grad), randn(8, grad=grad)
        opcheck(torch.ops.mdfast.rms_norm.default, (x, weight, 1e-5, name))
        opcheck(torch.ops.mdfast.add_rms_norm.default, (x, update, weight, 1e-5, name))
        q = randn(2, 4, 3, 8, grad=grad)
        for cos, sin_rot in ((None, None), tables):
            opcheck(torch.ops.mdfast.rope.default, (q, 10000.0, cos, sin_rot, name))
            opcheck(torch.ops.mdfast.rope_.default, (q.detach().clone(), 10000.0, cos, sin_rot, name))
        gate, up = randn(6, 8, grad=grad), randn(6, 8, grad=grad)
        opcheck(torch.ops.mdfast.swiglu.default, (gate, up, name))


def cache_inputs(device: str, B=2, H=4, H_kv=2, n=3, hd=8, L=7):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, h, n, hd, generator=g).to(device) for h in (H, H_kv, H_kv))
    keys, values = (torch.randn(B, L, H_kv, hd, generator=g).to(device) for _ in range(2))
    positions = torch.stack([torch.randperm(L, generator=g)[:n] for _ in range(B)]).to(device)
    write = torch.tensor([[True, False, True], [True, True, True]], device=device)
    bias = torch.zeros(B, 1, 1, L, device=device)
    bias[0, ..., :2] = torch.finfo(torch.float32).min
    return q, k, v, keys, values, positions, write, bias


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_cached_attention(device):
    q, k, v, keys, values, positions, write, bias = cache_inputs(device)
    opcheck(torch.ops.mdfast.cached_attention.default, (q, k, v, keys, values, positions, write, bias))
    opcheck(torch.ops.mdfast.cached_attention.default, (q, k, v, keys, values, positions, None, None))


def test_cached_attention_writes_the_cache_and_attends_over_it():
    """The op against the formula: K, V at S replaced where ``write`` (kept elsewhere), then grouped-query
    attention of S's q over all L cached keys with the padding bias."""
    q, k, v, keys, values, positions, write, bias = cache_inputs("cpu")
    want_keys, want_values = keys.clone(), values.clone()
    for b in range(q.shape[0]):
        for j, p in enumerate(positions[b].tolist()):
            if write[b, j]:
                want_keys[b, p], want_values[b, p] = k[b, :, j], v[b, :, j]
    K = want_keys.transpose(1, 2).repeat_interleave(2, dim=1)
    Vv = want_values.transpose(1, 2).repeat_interleave(2, dim=1)
    weights = torch.softmax(q @ K.transpose(-1, -2) / 8**0.5 + bias, dim=-1)
    want = (weights @ Vv).transpose(1, 2).flatten(2)
    got = torch.ops.mdfast.cached_attention.default(q, k, v, keys, values, positions, write, bias)
    torch.testing.assert_close(got, want)
    assert torch.equal(keys, want_keys) and torch.equal(values, want_values)


# ---------------------------------------------------------------------------------------------
# fake tensors: the public functions' shapes and dtypes without running a kernel
# ---------------------------------------------------------------------------------------------


def test_public_functions_under_fake_tensors():
    with FakeTensorMode():
        logits, X, t, embedding, mask, rho = step_inputs("cpu", B=3, N=4, V=30, E=6)
        stats = ops.token_stats(logits, k=5, full_entropy=True, check_finite=False)
        assert stats.topk_probs.shape == (3, 4, 5) and stats.topk_ids.dtype == torch.int64
        assert stats.entropy_full.shape == (3, 4) and stats.lse.dtype == torch.float32
        step = ops.xflow_step(logits, X, t, embedding, mask, rho=rho, check_finite=False)
        assert step.tokens.shape == (3, 4) and step.tokens.dtype == torch.int64
        assert step.committed.shape == (3,) and step.reedited.dtype == torch.bool
        assert step.X.shape == X.shape and step.t.shape == t.shape
        x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
        summed, normed = ops.rms_norm(x, torch.ones(16, dtype=torch.bfloat16), 1e-5, update=x)
        assert normed.shape == x.shape and normed.dtype == torch.bfloat16 and summed.dtype == torch.bfloat16
        q = torch.randn(2, 5, 4, 8)
        assert ops.rope_(q, 10000.0) is q
        assert ops.swiglu(x, x).shape == x.shape


# ---------------------------------------------------------------------------------------------
# autograd through the registered formulas
# ---------------------------------------------------------------------------------------------


def grads(f, *inputs):
    """The gradients of sum(f(inputs) * w) (a fixed random w) in every input."""
    out = f(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    return torch.autograd.grad(loss, inputs)


def leaves(*shapes, dtype=torch.float64):
    g = torch.Generator().manual_seed(4)
    return [torch.randn(*s, generator=g, dtype=dtype, requires_grad=True) for s in shapes]


def test_gradcheck_float64():
    x, update, weight = leaves((2, 3, 8), (2, 3, 8), (8,))
    assert torch.autograd.gradcheck(lambda a, w: torch.ops.mdfast.rms_norm(a, w, 1e-5, "torch"), (x, weight))
    assert torch.autograd.gradcheck(
        lambda a, u, w: torch.ops.mdfast.add_rms_norm(a, u, w, 1e-5, "torch"), (x, update, weight)
    )
    (q,) = leaves((2, 4, 3, 8))
    tables = reference.rope_tables(torch.arange(4), 8, 10000.0, torch.float64)
    assert torch.autograd.gradcheck(lambda a: torch.ops.mdfast.rope(a, 10000.0, None, None, "torch"), (q,))
    assert torch.autograd.gradcheck(lambda a: torch.ops.mdfast.rope(a, 10000.0, *tables, "torch"), (q,))
    gate, up = leaves((6, 8), (6, 8))
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.mdfast.swiglu(a, b, "torch"), (gate, up))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_equal_the_references(dtype):
    """The public functions (through the ops' formulas) against autograd of mdfast.reference."""
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    x, update, weight = leaves((2, 3, 16), (2, 3, 16), (16,), dtype=dtype)
    got = grads(lambda a, w: ops.rms_norm(a, w, 1e-5), x, weight)
    want = grads(lambda a, w: reference.rms_norm(a, w, 1e-5), x, weight)
    torch.testing.assert_close(got, want, **tol)
    got = grads(lambda a, u, w: ops.rms_norm(a, w, 1e-5, update=u), x, update, weight)
    want = grads(lambda a, u, w: (a + u, reference.rms_norm(a + u, w, 1e-5)), x, update, weight)
    torch.testing.assert_close(got, want, **tol)
    (q,) = leaves((2, 5, 4, 8), dtype=dtype)
    got = grads(lambda a: ops.rope_(a * 1.0, 10000.0), q)  # in place on a non-leaf, as the body does
    want = grads(lambda a: reference.rope(a, 10000.0), q)
    torch.testing.assert_close(got, want, **tol)
    gate, up = leaves((6, 8), (6, 8), dtype=dtype)
    assert all(map(torch.equal, grads(ops.swiglu, gate, up), grads(reference.swiglu, gate, up)))  # the same formula


# ---------------------------------------------------------------------------------------------
# torch.compile of one decoding step
# ---------------------------------------------------------------------------------------------


def decode_step(model, prompt, X, t, embedding, mask_embedding, rho):
    """One x-flow decoding step: the body's forward on [prompt embeddings, X], then ``ops.xflow_step`` in place."""
    logits = model(inputs_embeds=torch.cat([prompt, X], dim=1)).logits[:, prompt.shape[1] :]
    step = ops.xflow_step(logits, X, t, embedding, mask_embedding, rho=rho, inplace=True, check_finite=False)
    return step.tokens


def cached_decode_step(model, cache, positions, X, t, embedding, mask_embedding, rho):
    """The same over a KV cache: ``forward_cached`` at S = ``positions`` (no range check: no sync), then the step."""
    logits = model.forward_cached(cache, positions, inputs_embeds=X, check_range=False).logits
    step = ops.xflow_step(logits, X, t, embedding, mask_embedding, rho=rho, inplace=True, check_finite=False)
    return step.tokens


def decoding_state(model, B=2, P=5, N=6):
    g = torch.Generator().manual_seed(5)
    embedding = model.get_input_embeddings().weight.detach()
    mask = embedding[model.config.mask_token_id]
    prompt = embedding[torch.randint(0, 48, (B, P), generator=g)]
    X, t = mask.expand(B, N, -1).clone(), torch.zeros(B, N)
    return prompt, X, t, embedding, mask


def compare_steps(compiled, eager, state, steps: int = 4) -> None:
    """``steps`` steps of each from the same state: the same tokens every step, the same state within 1e-5."""
    rho_of = [torch.full((state[0].shape[0],), i / (steps - 1)) for i in range(steps)]
    mine, theirs = [x.clone() for x in state[:2]], [x.clone() for x in state[:2]]
    for rho in rho_of:
        got, want = compiled(*mine, *state[2:], rho), eager(*theirs, *state[2:], rho)
        assert torch.equal(got, want)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def check_compiled_decoding(backend: str) -> None:
    model = tiny_llada()
    prompt, X, t, embedding, mask = decoding_state(model)

    def step(X, t, embedding, mask, rho):
        return decode_step(model, prompt, X, t, embedding, mask, rho)

    with torch.no_grad():
        explained = torch._dynamo.explain(step)(X.clone(), t.clone(), embedding, mask, torch.zeros(2))
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
        compare_steps(torch.compile(step, fullgraph=True, backend=backend), step, (X, t, embedding, mask))

        cache = model.allocate_cache(2, prompt.shape[1] + X.shape[1])
        model(inputs_embeds=torch.cat([prompt, X], dim=1), cache=cache)  # the refresh fills the cache
        positions = torch.arange(prompt.shape[1], prompt.shape[1] + X.shape[1]).expand(2, -1)

        def cached(X, t, embedding, mask, rho):
            return cached_decode_step(model, cache, positions, X, t, embedding, mask, rho)

        keys, values = cache.keys.clone(), cache.values.clone()
        eager_cache = type(cache)(keys, values, filled=True)

        def eager_cached(X, t, embedding, mask, rho):
            return cached_decode_step(model, eager_cache, positions, X, t, embedding, mask, rho)

        compare_steps(torch.compile(cached, fullgraph=True, backend=backend), eager_cached, (X, t, embedding, mask))
        torch.testing.assert_close(cache.keys, eager_cache.keys)  # the op wrote the cache in place under compile


def test_compiled_decoding_step_has_no_graph_break(fresh_dynamo):
    check_compiled_decoding("aot_eager")


@pytest.mark.slow
def test_compiled_decoding_step_with_inductor(fresh_dynamo):
    check_compiled_decoding("inductor")


def test_the_step_ops_call_the_backends_ops_name():
    """The public functions pass the resolved backend's name: "auto" on CPU logits is the C++ backend where it runs."""
    logits = step_inputs("cpu")[0]
    expected = "cpu" if backends.get("cpu").unavailable_reason() is None else "torch"
    assert ops.resolve_backend("auto", logits.device, logits.dtype) == expected
    got = ops.token_stats(logits, 4, backend="auto")
    want = ops.token_stats(logits, 4, backend=expected)
    assert torch.equal(got.argmax, want.argmax) and torch.equal(got.lse, want.lse)
