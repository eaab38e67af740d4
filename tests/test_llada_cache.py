"""The KV cache of the native LLaDA body (SPEC 8, model level: mdfast/models/llada_cache.py).

A refresh (``forward(..., cache=)``) must give the plain forward's logits bit for bit and write
every layer's K, V (after RoPE) as computed here from the layer inputs in float64; a cached step
(``forward_cached``) at positions S, on the refreshed inputs, must give S's logits and K, V of the
full forward (float64, within 1e-12), with S contiguous or not, and left-padded rows must equal
their solo runs. After S's inputs change, a one-layer model's cached step is still exact (no
other position's K, V depend on S's inputs); a deeper model's differs only through the stale K, V
outside S, and a refresh restores exactness. Bad positions or caches raise errors naming them;
steps write the cache in place (its storage never moves); its size is 2 * layers * B * L *
n_kv_heads * hd elements.
"""

from __future__ import annotations

import pytest
import torch
from checks import assert_close, assert_equal
from test_llada import left_padded, tiny_llada

from mdfast import reference
from mdfast.models.llada import padding_bias
from mdfast.models.llada_cache import KVCache, allocate_cache, rope_at_

V = 50  # the tiny models' vocabulary (test_llada.TINY)


def model64(**overrides):
    """A tiny random LLaDAModel (test_llada.tiny_llada) in float64, so the formulas are compared exactly."""
    return tiny_llada(**overrides).double()


def rows(t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """t[b, positions[b, j]] for t (B, L, ...) and positions (B, n)."""
    index = positions.reshape(*positions.shape, *[1] * (t.dim() - 2)).expand(-1, -1, *t.shape[2:])
    return t.gather(1, index)


def layer_kv(model, ids: torch.Tensor, mask: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's K, V (B, L, n_kv_heads, hd) after RoPE, from its input in the plain forward (no cache code)."""
    cfg = model.config
    bias = padding_bias(mask, torch.float64)  # the plain forward's mask (tests/test_llada.py checks it)
    state = model.state_dict()
    x, out = model.get_input_embeddings()(ids), []
    for i, block in enumerate(model.transformer["blocks"]):
        h = block.attn_norm(x)
        k = h @ state[f"model.transformer.blocks.{i}.k_proj.weight"].T
        v = h @ state[f"model.transformer.blocks.{i}.v_proj.weight"].T
        k = reference.rope(k.unflatten(-1, (cfg.n_kv_heads, cfg.head_dim)), cfg.rope_theta)
        out.append((k, v.unflatten(-1, (cfg.n_kv_heads, cfg.head_dim))))
        x = block(x, bias)
    return out


def cached_step(model, cache, ids, positions, mask=None):
    """forward_cached at S = positions on the inputs ids (B, L) gathered there: S's logits (B, n, V)."""
    return model.forward_cached(cache, positions, input_ids=ids.gather(1, positions), attention_mask=mask).logits


# ---------------------------------------------------------------------------------------------
# (a) the refresh
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 4}, {"weight_tying": True}], ids=["gqa", "mha", "tied"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
def test_refresh_keeps_the_logits_and_writes_every_layers_kv(overrides, padded):
    model = model64(**overrides)
    ids, mask = left_padded(3, 11, V)
    mask = mask if padded else None
    cache = model.allocate_cache(3, 11)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        refreshed = model(input_ids=ids, attention_mask=mask, cache=cache).logits
        want = layer_kv(model, ids, mask)
    assert_equal("refresh logits", refreshed, plain)
    assert cache.filled
    for i, (k, v) in enumerate(want):
        assert_close(f"layer {i} K", cache.keys[i], k, 1e-12, scale=1.0)
        assert_close(f"layer {i} V", cache.values[i], v, 1e-12, scale=1.0)


def test_refresh_in_float32_is_bitwise_the_plain_forward():
    model = tiny_llada()
    ids, mask = left_padded(3, 9, V)
    cache = model.allocate_cache(3, 9)
    with torch.no_grad():
        assert_equal("logits", model(input_ids=ids, attention_mask=mask, cache=cache).logits,
                     model(input_ids=ids, attention_mask=mask).logits)  # fmt: skip
    assert cache.keys.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# (b), (e) a cached step on the refreshed inputs
# ---------------------------------------------------------------------------------------------

POSITIONS = {
    "block": [[4, 5, 6, 7], [4, 5, 6, 7]],
    "two_spans": [[1, 2, 8, 9], [9, 10, 0, 3]],  # (e) S gathered from two separate spans, any order
    "suffix": [[7, 8, 9, 10], [7, 8, 9, 10]],
}


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 4}, {"scale_logits": True}], ids=["gqa", "mha", "scaled"])
@pytest.mark.parametrize("layout", list(POSITIONS))
def test_cached_step_on_the_same_inputs_is_the_full_forward(overrides, layout):
    model = model64(**overrides)
    ids = torch.randint(0, V, (2, 11))
    positions = torch.tensor(POSITIONS[layout])
    cache = model.allocate_cache(2, 11)
    with torch.no_grad():
        full = model(input_ids=ids, cache=cache).logits
        before = cache.keys.clone(), cache.values.clone()
        got = cached_step(model, cache, ids, positions)
    assert_close("S's logits", got, rows(full, positions), 1e-12, scale=1.0)
    outside = torch.ones(2, 11, dtype=torch.bool).scatter_(1, positions, False)
    for i in range(model.config.n_layers):
        for name, now, was in (("K", cache.keys[i], before[0][i]), ("V", cache.values[i], before[1][i])):
            assert_close(f"layer {i} {name} at S", rows(now, positions), rows(was, positions), 1e-12, scale=1.0)
            assert_equal(f"layer {i} {name} outside S", now[outside], was[outside])


def test_rope_at_positions_is_the_full_forwards_rope():
    """rope_at_ at positions 0..L-1 (in any order) is reference.rope bit for bit, float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 7, 3, 8, dtype=dtype)
        order = torch.stack([torch.randperm(7), torch.randperm(7)])
        got = rope_at_(rows(x, order).clone(), order, 500000.0)
        assert_equal(f"{dtype} rope", got, rows(reference.rope(x, 500000.0), order))


# ---------------------------------------------------------------------------------------------
# (c) changed inputs at S
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["block", "two_spans"])
def test_changed_inputs_one_layer_is_exact(layout):
    """One layer: the K, V outside S depend only on those positions' inputs, which did not change."""
    model = model64(n_layers=1)
    ids = torch.randint(0, V, (2, 11))
    positions = torch.tensor(POSITIONS[layout])
    changed = ids.scatter(1, positions, torch.randint(0, V, positions.shape))
    cache = model.allocate_cache(2, 11)
    with torch.no_grad():
        model(input_ids=ids, cache=cache)
        got = cached_step(model, cache, changed, positions)
        want = model(input_ids=changed).logits
        k, v = layer_kv(model, changed, None)[0]
    assert_close("S's logits", got, rows(want, positions), 1e-12, scale=1.0)
    assert_close("K", cache.keys[0], k, 1e-12, scale=1.0)
    assert_close("V", cache.values[0], v, 1e-12, scale=1.0)


def test_changed_inputs_deeper_model_differs_by_stale_kv_until_a_refresh():
    """Two layers: layer 1's K, V outside S are functions of layer 0's outputs there, which attend to
    S's old inputs; the cached step keeps those stale K, V (SPEC 8's approximation), so its logits at
    S differ from a full forward on the changed inputs. A refresh on the changed inputs restores
    exactness, and its layer-0 K, V (not stale) agree with the cached step's throughout."""
    model = model64(n_layers=2)
    ids = torch.randint(0, V, (2, 11))
    positions = torch.tensor(POSITIONS["two_spans"])
    changed = ids.scatter(1, positions, (ids.gather(1, positions) + 1) % V)
    cache = model.allocate_cache(2, 11)
    with torch.no_grad():
        model(input_ids=ids, cache=cache)
        stale = cached_step(model, cache, changed, positions)
        layer0 = cache.keys[0].clone(), cache.values[0].clone()
        want = rows(model(input_ids=changed).logits, positions)
        assert (stale - want).abs().max() > 1e-6, "stale K, V of layer 1 must show in S's logits"
        model(input_ids=changed, cache=cache)
        fresh = cached_step(model, cache, changed, positions)
    assert_close("layer 0 K", layer0[0], cache.keys[0], 1e-12, scale=1.0)
    assert_close("layer 0 V", layer0[1], cache.values[0], 1e-12, scale=1.0)
    assert_close("S's logits after a refresh", fresh, want, 1e-12, scale=1.0)


# ---------------------------------------------------------------------------------------------
# (d) left padding
# ---------------------------------------------------------------------------------------------


def test_left_padded_rows_equal_their_solo_runs():
    """Rows with 0, 2, 4 pads: each row's cached step (the same relative S) equals its solo run's."""
    model = model64()
    L = 12
    ids, mask = left_padded(3, L, V)
    changed = torch.randint(0, V, (3, L))
    relative = torch.tensor([[0, 1, 5, 6]])  # positions after the row's first real token
    positions = relative + 2 * torch.arange(3)[:, None]
    cache = model.allocate_cache(3, L)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, cache=cache)
        step_ids = ids.scatter(1, positions, changed.gather(1, positions))
        got = cached_step(model, cache, step_ids, positions, mask)
        for b in range(3):
            solo_cache = allocate_cache(model, 1, L - 2 * b)
            model(input_ids=ids[b : b + 1, 2 * b :], cache=solo_cache)
            solo = cached_step(model, solo_cache, step_ids[b : b + 1, 2 * b :], relative)
            assert_close(f"row {b}", got[b : b + 1], solo, 1e-12, scale=1.0)
            # V alike (K too, but rotated at positions shifted by the padding: RoPE is relative)
            assert_close(f"row {b} V", cache.values[:, b, 2 * b :], solo_cache.values[:, 0], 1e-12, scale=1.0)


# ---------------------------------------------------------------------------------------------
# (f) bad input, (g) no allocation per step, memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("positions", "error", "message"),
    [
        (torch.tensor([[1, 11], [2, 3]]), ValueError, r"positions: every index must be in \[0, L\)"),
        (torch.tensor([[1, -1], [2, 3]]), ValueError, r"positions: every index must be in \[0, L\)"),
        (torch.tensor([[1, 1], [2, 3]]), ValueError, "positions: a row names a position twice"),
        (torch.tensor([[1, 2]]), ValueError, r"positions: expected shape \(B, n\) = \(2, 2\)"),
        (torch.tensor([1, 2]), ValueError, r"positions: expected shape \(B, n\)"),
        (torch.tensor([[1, 2], [2, 3]], dtype=torch.int32), TypeError, "positions: expected dtype torch.int64"),
        ([[1, 2], [2, 3]], TypeError, "positions: expected an int64 tensor"),
    ],
    ids=["past_L", "negative", "repeated", "rows", "1d", "int32", "list"],
)
def test_bad_positions(positions, error, message):
    model = tiny_llada()
    cache = model.allocate_cache(2, 11)
    with torch.no_grad():
        model(input_ids=torch.randint(0, V, (2, 11)), cache=cache)
        with pytest.raises(error, match=message):
            model.forward_cached(cache, positions, input_ids=torch.randint(0, V, (2, 2)))


def test_bad_cache():
    model = tiny_llada()
    ids = torch.randint(0, V, (2, 11))
    positions = torch.tensor([[0, 1], [0, 1]])
    with torch.no_grad():
        for B, L in ((3, 11), (2, 10)):
            with pytest.raises(ValueError, match=r"cache: keys of shape .* needs \(2, 2, 11, 2, 8\)"):
                model(input_ids=ids, cache=model.allocate_cache(B, L))
        with pytest.raises(ValueError, match="cache: keys of shape"):
            model.forward_cached(model.allocate_cache(3, 11), positions, input_ids=ids[:, :2])
        with pytest.raises(TypeError, match=r"cache: keys is a torch\.float64 tensor"):
            model(input_ids=ids, cache=model64().allocate_cache(2, 11))
        with pytest.raises(TypeError, match="cache: expected a KVCache"):
            model(input_ids=ids, cache=(torch.zeros(1), torch.zeros(1)))
        cache = model.allocate_cache(2, 11)
        with pytest.raises(ValueError, match="cache: no refresh has filled it yet"):
            model.forward_cached(cache, positions, input_ids=ids[:, :2])
        model(input_ids=ids, cache=cache)
        with pytest.raises(ValueError, match="attention_mask: expected shape"):
            model.forward_cached(cache, positions, input_ids=ids[:, :2], attention_mask=torch.ones(2, 2))
        with pytest.raises(ValueError, match="exactly one"):
            model.forward_cached(cache, positions)
    with pytest.raises(ValueError, match="length: expected a positive int"):
        model.allocate_cache(2, 0)


def test_steps_write_the_cache_in_place_and_its_size():
    model = model64(n_kv_heads=2)
    cfg = model.config
    B, L = 2, 11
    cache = model.allocate_cache(B, L)
    assert isinstance(cache, KVCache)
    assert cache.numel() == 2 * cfg.n_layers * B * L * cfg.n_kv_heads * cfg.head_dim
    assert cache.nbytes() == cache.numel() * 8
    assert cache.keys.shape == (cfg.n_layers, B, L, cfg.n_kv_heads, cfg.head_dim)
    pointers = cache.keys.data_ptr(), cache.values.data_ptr()
    ids = torch.randint(0, V, (B, L))
    with torch.no_grad():
        model(input_ids=ids, cache=cache)
        for start in (0, 4, 8):
            positions = torch.arange(start, start + 3).expand(B, -1)
            cached_step(model, cache, torch.randint(0, V, (B, L)), positions)
        model(input_ids=ids, cache=cache)
    assert (cache.keys.data_ptr(), cache.values.data_ptr()) == pointers
    assert all(cache.layer(i)[0].data_ptr() == cache.keys[i].data_ptr() for i in range(cfg.n_layers))


# ---------------------------------------------------------------------------------------------
# a refresh of some rows (cache_rows) and entries that only query (write)
# ---------------------------------------------------------------------------------------------


def test_refresh_of_some_rows_writes_those_rows_only():
    model = model64()
    ids, mask = left_padded(4, 9, V)
    cache = model.allocate_cache(4, 9)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, cache=cache)
        before = cache.keys.clone(), cache.values.clone()
        other = torch.randint(0, V, (4, 9))
        full = model.allocate_cache(4, 9)
        want = model(input_ids=other, attention_mask=mask, cache=full).logits
        R = torch.tensor([3, 1])
        got = model(input_ids=other[R], attention_mask=mask[R], cache=cache, cache_rows=R).logits
    assert_close("the rows' logits", got, want[R], 1e-12, scale=1.0)
    for name, now, was, fresh in (("K", cache.keys, before[0], full.keys), ("V", cache.values, before[1], full.values)):
        assert_close(f"{name} of the refreshed rows", now[:, R], fresh[:, R], 1e-12, scale=1.0)
        assert_equal(f"{name} of the other rows", now[:, [0, 2]], was[:, [0, 2]])


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        (torch.tensor([0.0]), TypeError, "cache_rows: expected an int64 tensor"),
        (torch.tensor([0, 1]), ValueError, r"cache_rows: expected shape \(1,\)"),
        ("unfilled", ValueError, "cache: a refresh of some rows needs a filled cache"),
    ],
)
def test_bad_cache_rows(rows, error, message):
    model = model64()
    ids = torch.randint(0, V, (1, 6))
    cache = model.allocate_cache(3, 6)
    if rows == "unfilled":
        rows = torch.tensor([1])
    else:
        model(input_ids=ids.repeat(3, 1), cache=cache)
    with pytest.raises(error, match=message):
        model(input_ids=ids, cache=cache, cache_rows=rows)


def test_entries_that_only_query_keep_the_cache():
    """write=False at an entry: its K, V stay the cache's, and the written entries see them as before."""
    model = model64()
    ids = torch.randint(0, V, (2, 10))
    positions = torch.tensor([[4, 5, 0, 1], [6, 7, 2, 8]])
    write = torch.tensor([[True, True, False, False], [True, True, False, True]])
    cache = model.allocate_cache(2, 10)
    with torch.no_grad():
        model(input_ids=ids, cache=cache)
        before, before_values = cache.keys.clone(), cache.values.clone()
        changed = torch.randint(0, V, (2, 10))
        got = model.forward_cached(cache, positions, input_ids=changed.gather(1, positions), write=write).logits
        after = cache.keys.clone()
        # the same step with only the written entries: same logits there, same cache
        cache.keys.copy_(before)
        cache.values.copy_(before_values)
        written = [positions[b][write[b]] for b in range(2)]
        for b in range(2):
            one = KVCache(cache.keys[:, b : b + 1].clone(), cache.values[:, b : b + 1].clone(), filled=True)
            S = written[b][None]
            alone = model.forward_cached(one, S, input_ids=changed[b : b + 1].gather(1, S)).logits
            assert_close(f"row {b}'s written entries", got[b][write[b]], alone[0], 1e-12, scale=1.0)
            assert_close(f"row {b}'s cache", after[:, b], one.keys[:, 0], 1e-12, scale=1.0)
    kept = ~write
    for b in range(2):
        for p in positions[b][kept[b]].tolist():
            assert_equal(f"row {b} position {p}", after[:, b, p], before[:, b, p])
    with pytest.raises(ValueError, match="write: expected a bool tensor"):
        model.forward_cached(cache, positions, input_ids=ids.gather(1, positions), write=write.long())
