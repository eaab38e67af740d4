"""The native LLaDA body (mdfast.models.llada) against SPEC 5 evaluated here in float64.

``spec_logits`` below is written from SPEC 5 alone, independently of the module: float64, a Python
loop over layers and over query heads (head j reads kv head j // (n_heads / n_kv_heads)), padding
keys masked with -inf. The native body in float32 must match it within 1e-5 (|want| + 1), and the
same code run in float64 within 1e-12 (the formulas themselves), with and without left padding,
for grouped-query and full attention, weight tying, scale_logits and a padded embedding table; its
state dict must carry exactly SPEC 5's keys; sharded checkpoints must round trip through
save_llada / load_llada bit for bit and bad checkpoints or configs must raise
ValueError naming the problem; mdfast.generate must decode the loaded model like the original,
and a left-padded batch like the solo runs.

The fused projections (qkv_proj, gate_up_proj) must stay invisible in the state dict: checkpoint
keys only, row views of the fused weights, and load errors naming checkpoint keys. The eager port
in tests/llada_eager.py stands in for LLaDA's remote code: it must match SPEC 5 too, and
mdfast.patch on it must drive a native body on the same tensors (no second copy) that decodes
exactly like a native model with those weights, leaving the stand-in's own forward unchanged.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from checks import assert_close, assert_equal
from llada_eager import EagerLLaDA, EagerLLaDAConfig
from safetensors.torch import save_file

import mdfast
from mdfast.models import RowSelectingHead
from mdfast.models.llada import LLaDAConfig, LLaDAModel, load_llada, padding_bias, save_llada

TINY = {
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "mlp_hidden_size": 48,
    "vocab_size": 50,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "include_bias": False,
    "weight_tying": False,
    "scale_logits": False,
    "input_emb_norm": False,
    "max_sequence_length": 64,
    "mask_token_id": 49,
    "eos_token_id": 48,
}

VARIANTS = {
    "gqa": {},
    "mha": {"n_kv_heads": 4},
    "weight_tying": {"weight_tying": True},
    "scale_logits": {"scale_logits": True},
    "embedding_size": {"embedding_size": 56, "rope_theta": 500000.0},
}

BLOCK_WEIGHTS = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")

# LLaDA-8B-Instruct's config.json as SPEC 5 states it, with some of the remote code's other keys.
LLADA_8B = {
    "d_model": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "n_kv_heads": 32,
    "mlp_hidden_size": 12288,
    "vocab_size": 126464,
    "embedding_size": 126464,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "include_bias": False,
    "weight_tying": False,
    "scale_logits": False,
    "input_emb_norm": False,
    "max_sequence_length": 4096,
    "mask_token_id": 126336,
    "eos_token_id": 126081,
    "use_cache": False,
    "model_type": "llada",
    "architectures": ["LLaDAModelLM"],
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "rope": True,
    "alibi": False,
    "multi_query_attention": None,
    "pad_token_id": 126081,
}


def tiny_config(**overrides) -> LLaDAConfig:
    return LLaDAConfig.from_dict({**TINY, **overrides})


def tiny_llada(**overrides) -> LLaDAModel:
    """Float32 weights: norm weights 1 +- 0.3, every matrix (wte included) N(0, 1/d_in), so
    attention is far from uniform and a wrong mask, rotation or head grouping changes the logits,
    which stay of order 1 (max |logit| ~ 5: the 1e-5 (|want| + 1) bound is then 3x float32's
    error here; a gain of 1.5 brings the worst case to the bound)."""
    model = LLaDAModel(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
    return model


def eager_llada(model: LLaDAModel, **overrides) -> EagerLLaDA:
    """The stand-in for LLaDA's remote code (tests/llada_eager.py) with a copy of ``model``'s weights."""
    remote = EagerLLaDA(EagerLLaDAConfig(**{**TINY, **overrides})).eval()
    remote.load_state_dict(model.state_dict())
    return remote


def left_padded(batch: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and an attention mask with 0, 2, 4, ... zeros on the left of rows 0, 1, 2, ..."""
    ids = torch.randint(0, vocab, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, : 2 * b] = 0
    return ids, mask


# ---------------------------------------------------------------------------------------------
# SPEC 5 in float64
# ---------------------------------------------------------------------------------------------


def spec_logits(
    weights: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """SPEC 5's forward in float64 from a state dict, one layer and one query head at a time."""
    w = {key: value.double() for key, value in weights.items()}
    d, H, KV, eps = cfg["d_model"], cfg["n_heads"], cfg.get("n_kv_heads", cfg["n_heads"]), cfg["rms_norm_eps"]
    hd = d // H
    L = ids.shape[1]

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    inv_freq = torch.tensor([cfg["rope_theta"] ** (-2.0 * j / hd) for j in range(hd // 2)], dtype=torch.float64)
    angles = torch.arange(L, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)

    def rope(u):  # (B, L, hd)
        rotated = torch.cat([-u[..., hd // 2 :], u[..., : hd // 2]], dim=-1)
        return u * angles.cos() + rotated * angles.sin()

    x = w["model.transformer.wte.weight"][ids]
    for i in range(cfg["n_layers"]):
        p = {name: w[f"model.transformer.blocks.{i}.{name}.weight"] for name in BLOCK_WEIGHTS}
        h = rms(x, p["attn_norm"])
        q, k, v = h @ p["q_proj"].T, h @ p["k_proj"].T, h @ p["v_proj"].T
        heads = []
        for j in range(H):
            g = j // (H // KV)
            qj, kj, vj = (
                rope(q[..., j * hd : (j + 1) * hd]),
                rope(k[..., g * hd : (g + 1) * hd]),
                v[..., g * hd : (g + 1) * hd],
            )
            scores = qj @ kj.transpose(1, 2) / math.sqrt(hd)  # (B, L queries, L keys), no causal mask
            if mask is not None:
                scores = scores.masked_fill(mask[:, None, :] == 0, -math.inf)
            heads.append(torch.softmax(scores, dim=-1) @ vj)
        x = x + torch.cat(heads, dim=-1) @ p["attn_out"].T
        h = rms(x, p["ff_norm"])
        gate = h @ p["ff_proj"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ p["up_proj"].T)) @ p["ff_out"].T
    head = w["model.transformer.wte.weight"] if cfg["weight_tying"] else w["model.transformer.ff_out.weight"]
    logits = rms(x, w["model.transformer.ln_f.weight"]) @ head.T
    return logits / math.sqrt(d) if cfg["scale_logits"] else logits


# ---------------------------------------------------------------------------------------------
# (a) the forward against SPEC 5
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["native", "eager_port"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
def test_forward_matches_spec(variant, padded, body):
    """The native body, and tests/llada_eager.py (the benchmark's baseline and the remote-code
    stand-in) on the same weights, against SPEC 5 in float64."""
    overrides = VARIANTS[variant]
    model = tiny_llada(**overrides)
    ids, mask = left_padded(3, 11, 50)
    mask = mask if padded else None
    run = model if body == "native" else eager_llada(model, **overrides)
    with torch.no_grad():
        got = run(input_ids=ids, attention_mask=mask, use_cache=False).logits
    want = spec_logits(model.state_dict(), {**TINY, **overrides}, ids, mask)
    assert got.dtype == torch.float32
    assert_close(f"{body} logits", got, want, 1e-5, scale=1.0)
    if body == "native":
        with torch.no_grad():  # the same code in float64: the formulas exactly, without float32 rounding
            exact = model.double()(input_ids=ids, attention_mask=mask).logits
        assert_close("float64 logits", exact, want, 1e-12, scale=1.0)


def test_padding_mask_changes_logits_and_all_ones_is_no_mask():
    model = tiny_llada()
    ids, mask = left_padded(3, 9, 50)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        ones = model(input_ids=ids, attention_mask=torch.ones_like(mask)).logits
        masked = model(input_ids=ids, attention_mask=mask).logits
        embeds = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask).logits
    # an all-zero bias: the attention of no mask at all, up to the rounding of another kernel
    assert_close("all-ones mask", ones, plain, 1e-6, scale=1.0)
    assert_close("row 0 (no padding)", masked[0], plain[0], 1e-6, scale=1.0)
    assert not torch.allclose(plain[1:], masked[1:]), "the padding mask must change the padded rows"
    assert torch.equal(masked, embeds), "inputs_embeds = wte[input_ids] must give the same logits"


def test_left_padding_equals_solo_rows():
    """RoPE is relative: with pad keys masked, a left-padded row's real positions give the logits
    of the same tokens run alone at positions 0.. (up to float32 rounding)."""
    model = tiny_llada()
    ids, mask = left_padded(3, 10, 50)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        for b in range(3):
            solo = model(input_ids=ids[b : b + 1, 2 * b :]).logits
            assert_close(f"row {b}", padded[b : b + 1, 2 * b :], solo, 1e-5, scale=1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_padding_bias_is_finite(dtype):
    """SPEC 5's (1 - mask) * float32.min, in the model dtype: float32.min overflows to -inf in
    bfloat16 and float16 and becomes that dtype's most negative finite value (as in the remote code).
    A mask without zeros gives an all-zero bias (built without a look at the values, so without a
    device sync); only None means no mask."""
    mask = left_padded(3, 6, 50)[1]
    bias = padding_bias(mask, dtype)
    assert bias.shape == (3, 1, 1, 6) and bias.dtype == dtype
    want = torch.where(mask == 0, torch.finfo(dtype).min, 0.0).to(dtype)[:, None, None, :]
    assert torch.equal(bias, want)
    assert torch.equal(padding_bias(torch.ones_like(mask), dtype), torch.zeros(3, 1, 1, 6, dtype=dtype))
    assert padding_bias(None, dtype) is None


def test_bfloat16_forward():
    """A bfloat16 model with padding: finite logits, close to the same bfloat16 weights run in
    float32 (bfloat16 activations through two layers: up to ~0.08 relative here)."""
    model = tiny_llada().to(torch.bfloat16)
    ids, mask = left_padded(3, 9, 50)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        want = model.float()(input_ids=ids, attention_mask=mask).logits
    assert got.dtype == torch.bfloat16 and bool(torch.isfinite(got).all())
    assert_close("bfloat16 logits", got, want, 0.25, scale=1.0)


def test_forward_arguments():
    model = tiny_llada()
    ids = torch.randint(0, 50, (1, 4))
    with pytest.raises(ValueError, match="use_cache"):
        model(input_ids=ids, use_cache=True)
    with pytest.raises(ValueError, match="position_ids"):
        model(input_ids=ids, position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids=ids, inputs_embeds=model.get_input_embeddings()(ids))
    assert model(input_ids=ids, output_hidden_states=False, return_dict=True).logits.shape == (1, 4, 50)


# ---------------------------------------------------------------------------------------------
# state-dict keys, config, checkpoints
# ---------------------------------------------------------------------------------------------


def spec_keys(cfg: dict) -> dict[str, tuple[int, ...]]:
    """SPEC 5's key list, written out here."""
    d, F_, V = cfg["d_model"], cfg["mlp_hidden_size"], cfg.get("embedding_size", cfg["vocab_size"])
    kv = cfg.get("n_kv_heads", cfg["n_heads"]) * (d // cfg["n_heads"])
    keys = {"model.transformer.wte.weight": (V, d), "model.transformer.ln_f.weight": (d,)}
    if not cfg["weight_tying"]:
        keys["model.transformer.ff_out.weight"] = (V, d)
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        keys.update(
            {
                p + "attn_norm.weight": (d,),
                p + "q_proj.weight": (d, d),
                p + "k_proj.weight": (kv, d),
                p + "v_proj.weight": (kv, d),
                p + "attn_out.weight": (d, d),
                p + "ff_norm.weight": (d,),
                p + "ff_proj.weight": (F_, d),
                p + "up_proj.weight": (F_, d),
                p + "ff_out.weight": (d, F_),
            }
        )
    return keys


@pytest.mark.parametrize("cfg", [TINY, {**TINY, "weight_tying": True}, LLADA_8B], ids=["tiny", "tied", "llada_8b"])
def test_state_dict_keys_are_spec_keys(cfg):
    model = LLaDAModel(LLaDAConfig.from_dict(cfg), device="meta")
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == spec_keys(cfg)


def test_state_dict_lists_fused_weights_as_views():
    """qkv_proj and gate_up_proj appear as their checkpoint parts, in SPEC 5's order, as row views
    of the fused weights (no copy)."""
    model = tiny_llada()
    state = model.state_dict()
    for i, block in enumerate(model.transformer["blocks"]):
        prefix = f"model.transformer.blocks.{i}."
        assert [key for key in state if key.startswith(prefix)] == [f"{prefix}{name}.weight" for name in BLOCK_WEIGHTS]
        for fused, parts in (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("ff_proj", "up_proj"))):
            weight = getattr(block, fused).weight
            views = [state[f"{prefix}{part}.weight"] for part in parts]
            assert all(view.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr() for view in views), (
                fused
            )
            assert views[0].data_ptr() == weight.data_ptr() and torch.equal(torch.cat(views), weight), fused


def test_load_state_dict_names_checkpoint_keys():
    """load_state_dict takes checkpoint state dicts (strict, or assign=True onto the meta device)
    and reports a missing, unexpected or misshapen part of a fused weight by its checkpoint key."""
    model = tiny_llada()
    state = dict(model.state_dict())
    ids = torch.randint(0, 50, (2, 7))
    meta = LLaDAModel(tiny_config(), device="meta")
    meta.load_state_dict(state, strict=True, assign=True)
    fresh = LLaDAModel(tiny_config())
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        assert torch.equal(meta(input_ids=ids).logits, want) and torch.equal(fresh(input_ids=ids).logits, want)

    key = "model.transformer.blocks.1.k_proj.weight"
    without = {k: v for k, v in state.items() if k != key}
    with pytest.raises(
        RuntimeError, match=r'Missing key\(s\) in state_dict: "model.transformer.blocks.1.k_proj.weight"\.'
    ) as error:
        LLaDAModel(tiny_config()).load_state_dict(without)
    assert "qkv_proj" not in str(error.value) and "Unexpected" not in str(error.value)
    result = LLaDAModel(tiny_config()).load_state_dict(without, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == ([key], [])
    with pytest.raises(
        RuntimeError, match=r'Unexpected key\(s\) in state_dict: "model.transformer.blocks.0.up_proj.bias"'
    ):
        LLaDAModel(tiny_config()).load_state_dict({**state, "model.transformer.blocks.0.up_proj.bias": torch.zeros(48)})
    with pytest.raises(
        RuntimeError,
        match=r"size mismatch for model.transformer.blocks.0.up_proj.weight: .* shape torch.Size\(\[47, 32\]\)",
    ):
        LLaDAModel(tiny_config()).load_state_dict(
            {**state, "model.transformer.blocks.0.up_proj.weight": torch.zeros(47, 32)}
        )


def test_config_from_dict():
    config = LLaDAConfig.from_dict({**LLADA_8B, "n_kv_heads": None, "some_future_key": 1})
    assert (config.n_kv_heads, config.embedding_size, config.head_dim) == (32, 126464, 128)
    assert (config.model_type, config.mask_token_id, config.eos_token_id) == ("llada", 126336, 126081)
    assert isinstance(config.rope_theta, float)
    without = {key: value for key, value in TINY.items() if key not in ("n_kv_heads",)}
    assert LLaDAConfig.from_dict(without).n_kv_heads == TINY["n_heads"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"include_bias": True}, "include_bias"),
        ({"input_emb_norm": True}, "input_emb_norm"),
        ({"rope_theta": None}, "rope_theta"),
        ({"weight_tying": "false"}, "weight_tying"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"block_type": "sequential"}, "block_type"),
        ({"model_type": "llada2_moe"}, "model_type"),
        ({"include_qkv_bias": True}, "include_qkv_bias"),
    ],
)
def test_config_errors(change, message):
    with pytest.raises(ValueError, match=message):
        LLaDAConfig.from_dict({**TINY, **change})


@pytest.mark.parametrize("key", ["mlp_hidden_size", "mask_token_id", "weight_tying"])
def test_config_missing_key(key):
    with pytest.raises(ValueError, match=f"missing required key '{key}'"):
        LLaDAConfig.from_dict({k: v for k, v in TINY.items() if k != key})


def test_sharded_round_trip(tmp_path):
    model = tiny_llada()
    save_llada(model, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(model.state_dict())
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llada"

    loaded = load_llada(tmp_path, dtype=torch.float32)
    assert not loaded.training and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids, mask = left_padded(3, 9, 50)
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
        )

    bf16 = load_llada(tmp_path)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16} and {p.device.type for p in bf16.parameters()} == {
        "cpu"
    }


def test_single_file_checkpoint(tmp_path):
    model = tiny_llada(weight_tying=True)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    loaded = load_llada(tmp_path, dtype=torch.float32)
    assert loaded.get_output_embeddings() is None
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def write_single(folder, state: dict[str, torch.Tensor], cfg: dict | None = None) -> None:
    (folder / "config.json").write_text(json.dumps(cfg or TINY))
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("model.transformer.blocks.1.up_proj.weight"),
            r"missing keys: \['model.transformer.blocks.1.up_proj.weight'\]",
        ),
        (
            lambda s: s.update({"model.transformer.blocks.0.q_proj.bias": torch.zeros(32)}),
            r"unexpected keys: \['model.transformer.blocks.0.q_proj.bias'\]",
        ),
        (
            lambda s: s.update({"model.transformer.blocks.0.k_proj.weight": torch.zeros(32, 32)}),
            r"blocks.0.k_proj.weight: shape \(32, 32\), expected \(16, 32\)",
        ),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_bad_checkpoint(tmp_path, edit, message):
    state = dict(tiny_llada().state_dict())
    edit(state)
    write_single(tmp_path, state)
    with pytest.raises(ValueError, match=message):
        load_llada(tmp_path)


def test_bad_checkpoint_folder(tmp_path):
    state = dict(tiny_llada().state_dict())
    write_single(tmp_path, state, {**TINY, "include_bias": True})
    with pytest.raises(ValueError, match="include_bias"):
        load_llada(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(ValueError, match="no checkpoint found"):
        load_llada(tmp_path)


def test_index_and_shards_must_agree(tmp_path):
    save_llada(tiny_llada(), tmp_path, max_shard_bytes=20_000)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.transformer.ln_f.weight"]  # its shard is still listed for others
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"disagree on keys: \['model\.transformer\.ln_f\.weight'\]"):
        load_llada(tmp_path)


# ---------------------------------------------------------------------------------------------
# (d) decoding with mdfast
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence"])
def test_generate_loaded_equals_original(tmp_path, decoder):
    model = tiny_llada()
    save_llada(model, tmp_path, max_shard_bytes=20_000)
    loaded = load_llada(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, 48, (3, 6))
    want = mdfast.generate(model, ids, max_new_tokens=8, steps=4, decoder=decoder).sequences
    got = mdfast.generate(loaded, ids, max_new_tokens=8, steps=4, decoder=decoder).sequences
    assert_equal("sequences", got, want)
    assert isinstance(loaded.get_output_embeddings(), torch.nn.Linear), "generate must put the head back"
    assert len(set(want[:, 6:].reshape(-1).tolist())) > 1, "a model that predicts one token everywhere tests nothing"


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence"])
def test_generate_padded_batch_equals_solo(decoder):
    model = tiny_llada()
    ids, mask = left_padded(3, 7, 48)
    batch = mdfast.generate(model, ids, mask, max_new_tokens=8, steps=4, decoder=decoder).sequences
    for b in range(3):
        solo = mdfast.generate(model, ids[b : b + 1, 2 * b :], max_new_tokens=8, steps=4, decoder=decoder).sequences
        assert_equal(f"row {b}", batch[b : b + 1, 7:], solo[:, 7 - 2 * b :])


def test_patch_remote_code_drives_a_native_body_on_the_same_weights():
    """mdfast.patch on a LLaDA model that is not native (the remote-code stand-in): the adapter
    drives a native LLaDAModel whose parameters are the stand-in's tensors (one copy of the
    weights); the stand-in's own forward is unchanged; decoding equals the native model's."""
    model = tiny_llada()
    remote = eager_llada(model)
    ids, mask = left_padded(3, 9, 48)
    with torch.no_grad():
        before = remote(input_ids=ids, attention_mask=mask).logits
    unpatched = mdfast.generate(remote, ids, mask, max_new_tokens=8, steps=4).sequences  # adapted for this call only
    assert not hasattr(remote, "mdfast_adapter")

    assert mdfast.patch(remote) is remote
    body = remote.mdfast_adapter.model
    assert isinstance(body, LLaDAModel) and body is not remote
    assert isinstance(remote.get_output_embeddings(), torch.nn.Linear), "the head is swapped in the native body only"
    remote_state = remote.state_dict()
    native_state = {
        key.replace("ff_out.linear.", "ff_out."): value for key, value in body.state_dict().items()
    }  # the head, wrapped
    assert native_state.keys() == remote_state.keys()
    for key, value in remote_state.items():
        assert value.data_ptr() == native_state[key].data_ptr() and torch.equal(value, model.state_dict()[key]), key
    storages = {p.untyped_storage().data_ptr() for p in body.parameters()}
    assert {p.untyped_storage().data_ptr() for p in remote.parameters()} == storages, "no second copy of the weights"

    with torch.no_grad():
        assert_close("remote logits after patch", remote(input_ids=ids, attention_mask=mask).logits, before, 1e-6)
    want = mdfast.generate(model, ids, mask, max_new_tokens=8, steps=4).sequences
    assert_equal("patched", remote.mdfast_generate(ids, mask, max_new_tokens=8, steps=4).sequences, want)
    assert_equal(
        "mdfast.generate",
        mdfast.generate(remote, ids, mask, max_new_tokens=8, steps=4, decoder="low_confidence").sequences,
        mdfast.generate(model, ids, mask, max_new_tokens=8, steps=4, decoder="low_confidence").sequences,
    )
    assert_equal("unpatched", unpatched, want)

    mdfast.unpatch(remote)
    assert not hasattr(remote, "mdfast_generate") and isinstance(remote.get_output_embeddings(), torch.nn.Linear)
    with torch.no_grad():
        assert_close("remote logits after unpatch", remote(input_ids=ids, attention_mask=mask).logits, before, 1e-6)


def test_patch_remote_code_falls_back_with_a_warning():
    """A LLaDA model whose config the native body does not implement: mdfast drives its own forward."""
    model = tiny_llada()
    remote = eager_llada(model, rope_full_precision=False)  # a remote-code switch SPEC 5 fixes to true
    with pytest.warns(UserWarning, match="driving EagerLLaDA's own forward.*rope_full_precision"):
        mdfast.patch(remote)
    assert remote.mdfast_adapter.model is remote and isinstance(remote.get_output_embeddings(), RowSelectingHead)
    ids = torch.randint(0, 48, (2, 5))
    want = mdfast.generate(model, ids, max_new_tokens=8, steps=4).sequences
    assert_equal("sequences", remote.mdfast_generate(ids, max_new_tokens=8, steps=4).sequences, want)
    mdfast.unpatch(remote)
    assert isinstance(remote.get_output_embeddings(), torch.nn.Linear)


def test_patch_swaps_the_head():
    model = mdfast.patch(tiny_llada())
    assert isinstance(model.get_output_embeddings(), RowSelectingHead)
    ids = torch.randint(0, 48, (1, 5))
    out = model.mdfast_generate(ids, max_new_tokens=4, steps=2, decoder="low_confidence")
    assert out.sequences.shape == (1, 9) and out.nfe == 2
    mdfast.unpatch(model)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)
