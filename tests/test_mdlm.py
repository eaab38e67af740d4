"""The code model (mdfast.code_model): data split, tokenizer, objective, training loop, infilling cases, commands.

The split must be disjoint by unit and reproducible from its recorded recipe; the tokenizer must round-trip any
text and carry [MASK]; ``mdlm_loss`` must equal the objective computed here by hand (1/r weighting, masked
positions only, 1/n per region); a few steps must lower the held-out loss of a tiny model; a run stopped and
resumed must end bit for bit where the uninterrupted run ends; the checkpoint must load with ``load_llada``; the
infilling cases must mask exactly a span of whole lines inside the named function's body; ``mdfast train mdlm``
and ``mdfast data`` must run them and record their command without a machine's folders.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import sys

import pytest
import torch

import mdfast
import mdfast.cli
from mdfast.cli import train_mdlm
from mdfast.code_model import cases as code_cases
from mdfast.code_model import data as code_data
from mdfast.code_model import pretrain as mdlm
from mdfast.code_model.cases import code_infill_cases, parses
from mdfast.code_model.mdlm_loss import MaskedBatch, mdlm_loss, sample_masks
from mdfast.models.llada import load_llada

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return code_data.load_tokenizer()


@pytest.fixture(scope="module")
def split():
    return code_data.split_files(code_data.source_files())


@pytest.fixture(scope="module")
def streams(tokenizer, split):
    """Small real token streams: a few training files, a few held-out files."""
    train, held = split
    train_paths = sorted(train)[:12]
    held_paths = sorted(held)[:4]
    return (
        code_data.encode_files(tokenizer, [train[p] for p in train_paths]),
        code_data.encode_files(tokenizer, [held[p] for p in held_paths]),
    )


# ---------------------------------------------------------------------------------------------
# data split and tokenizer
# ---------------------------------------------------------------------------------------------


def test_split_is_disjoint_by_unit(split):
    train, held = split
    listed = code_data.heldout_paths()
    assert listed == sorted(set(listed)), "the held-out list is sorted and has no duplicates"
    assert held and train and not train.keys() & held.keys()
    assert set(held) <= set(listed)
    held_units = {code_data.module_unit(p) for p in listed}
    assert not {code_data.module_unit(p) for p in train} & held_units
    assert sum(map(len, held.values())) < 0.1 * sum(map(len, train.values()))


def test_split_ignores_missing_and_new_files():
    """Another Python version: a listed file that is missing is simply absent; a new file in a held-out unit
    trains on neither side; the units are what module_unit says."""
    assert code_data.module_unit("json/decoder.py") == "json"
    assert code_data.module_unit("os.py") == "os"
    assert code_data.module_unit("test/test_json/test_dump.py") == "test/test_json"
    assert code_data.module_unit("test/test_os.py") == "test/test_os"
    files = {"a.py": "1", "pkg/x.py": "2", "pkg/new.py": "3", "test/test_a.py": "4", "b.py": "5"}
    train, held = code_data.split_files(files, heldout=["pkg/x.py", "pkg/gone.py", "test/test_a.py"])
    assert sorted(held) == ["pkg/x.py", "test/test_a.py"]
    assert sorted(train) == ["a.py", "b.py"]


def test_heldout_list_is_its_recipe():
    """The list is fixed in the repository; on the Python it was chosen on, its recipe gives it again."""
    header = code_data.HELDOUT_FILE.read_text().splitlines()[0]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if f"Python {version} " not in header:
        pytest.skip(f"the held-out list was chosen on another Python ({header!r}); this is {version}")
    assert code_data.choose_heldout(code_data.source_files()) == code_data.heldout_paths()


def test_tokenizer_round_trips_and_has_mask(tokenizer, split, tmp_path):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id) == (0, 1, 2)
    assert len(tokenizer) == code_data.VOCAB_SIZE
    held = split[1]
    texts = [held[p] for p in sorted(held)[:3]] + ["x\r\n\tλ = 'é' + \"\\u00e9\"  # ünïcödé 💡\n\n\n   ", ""]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert code_data.MASK_ID not in ids
    assert len(tokenizer(held[sorted(held)[0]], add_special_tokens=False)["input_ids"]) < len(held[sorted(held)[0]]) / 2

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    code_data.save_tokenizer(tokenizer, tmp_path, 256)
    for loaded in (
        AutoTokenizer.from_pretrained(str(tmp_path)),
        PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), mask_token="[MASK]"),
    ):
        assert loaded.mask_token_id == code_data.MASK_ID
        assert loaded(texts[0], add_special_tokens=False)["input_ids"] == tokenizer(texts[0])["input_ids"]


def test_train_tokenizer_layout():
    """Special tokens first, then the 256 bytes; any text round-trips, unseen bytes included."""
    texts = ["def f(x):\n    return x + 1\n" * 20, "class A:\n    pass\n" * 20]
    trained = code_data.train_tokenizer(texts, vocab_size=300)
    assert [trained.token_to_id(t) for t in code_data.SPECIAL_TOKENS] == [0, 1, 2]
    from tokenizers.pre_tokenizers import ByteLevel

    assert sorted(trained.token_to_id(symbol) for symbol in ByteLevel.alphabet()) == list(range(3, 259))
    assert 259 < trained.get_vocab_size() <= 300  # the merges this small corpus has
    for text in [*texts, "ÿ\x00 unseen ✓"]:
        assert trained.decode(trained.encode(text).ids) == text


def test_encode_files_appends_eos(tokenizer):
    stream = code_data.encode_files(tokenizer, ["a = 1\n", "b"])
    first = tokenizer("a = 1\n", add_special_tokens=False)["input_ids"]
    assert stream.tolist() == [*first, 1, *tokenizer("b", add_special_tokens=False)["input_ids"], 1]


# ---------------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------------


def test_loss_is_the_hand_computation():
    """loss_b = (1/n_b) sum over masked i of CE_i / r_b, float64 by hand: row 0 i.i.d. (n = L), row 1 a span of
    3 positions, row 2 nothing masked (0)."""
    B, L, V = 3, 6, 7
    logits = torch.randn(B, L, V)
    targets = torch.randint(0, V, (B, L))
    masked = torch.tensor(
        [[1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool
    )  # row 1: span 2..4 with r = 0.6
    ratio, n = [0.45, 0.6, 0.3], [L, 3, L]
    batch = MaskedBatch(
        masked, torch.tensor([1 / (r * k) for r, k in zip(ratio, n)]), torch.tensor([False, True, False])
    )
    got = mdlm_loss(logits[masked], targets[masked], batch)
    want = []
    for b in range(B):
        total = 0.0
        for i in range(L):
            if masked[b, i]:
                row = logits[b, i].double()
                total += (torch.logsumexp(row, 0) - row[targets[b, i]]).item() / ratio[b]
        want.append(total / n[b])
    assert got.shape == (B,) and got.dtype == torch.float32
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert got[2] == 0


def test_sample_masks_regions_and_weights():
    B, L = 64, 40
    generator = torch.Generator().manual_seed(0)
    batch = sample_masks(B, L, span_prob=0.5, span_min=5, span_max=12, generator=generator)
    for b in range(B):  # weight = 1/(r n): i.i.d. rows n = L; span rows mask inside one span of 5..12
        where = batch.masked[b].nonzero().flatten()
        if batch.span[b] and len(where):
            assert where.max() - where.min() < 12
    assert 0.2 < batch.span.float().mean() < 0.8
    ratio = (1 / (batch.weight[~batch.span].double() * L)).float()  # r of the i.i.d. rows
    assert bool(((ratio > 1e-3 - 1e-6) & (ratio <= 1.0 + 1e-6)).all())
    # stratified: r_b = eps + (1 - eps) frac(u + b/B), so B (r_b - eps) / (1 - eps) has one fractional part
    frac = torch.remainder((ratio.double() - 1e-3) / (1 - 1e-3) * B, 1.0)
    assert (torch.remainder(frac - frac[0] + 0.5, 1.0) - 0.5).abs().max() < 1e-4
    # fixed ratio: the masked share of the region is r
    fixed = sample_masks(
        2000, L, span_prob=0.0, span_min=1, span_max=1, generator=generator, ratio=torch.full((2000,), 0.3)
    )
    assert abs(fixed.masked.float().mean().item() - 0.3) < 0.01
    assert torch.allclose(fixed.weight, torch.full((2000,), 1 / (0.3 * L)))
    spans = sample_masks(50, L, span_prob=1.0, span_min=7, span_max=7, generator=generator, ratio=torch.ones(50))
    assert (spans.masked.sum(1) == 7).all()
    for row in spans.masked:
        where = row.nonzero().flatten()
        assert where.tolist() == list(range(int(where[0]), int(where[0]) + 7))
    with pytest.raises(ValueError, match="span_min"):
        sample_masks(2, L, span_prob=0.5, span_min=0, span_max=3, generator=generator)
    with pytest.raises(ValueError, match="ratio"):
        sample_masks(2, L, span_prob=0.5, span_min=1, span_max=3, generator=generator, ratio=torch.zeros(2))


def test_lr_schedule():
    options = mdlm.TrainOptions(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert math.isclose(mdlm.lr_at(0, 110, options), 1e-4)
    assert math.isclose(mdlm.lr_at(9, 110, options), 1e-3)
    assert math.isclose(mdlm.lr_at(60, 110, options), 0.55e-3)
    assert math.isclose(mdlm.lr_at(110, 110, options), 1e-4)
    assert math.isclose(mdlm.lr_at(50, None, options), 1e-3)


# ---------------------------------------------------------------------------------------------
# training: loss falls, exact resume, checkpoint
# ---------------------------------------------------------------------------------------------

TINY = {
    "seq_len": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "span_min": 4,
    "span_max": 32,
    "batch_size": 8,
    "lr": 3e-3,
    "warmup_steps": 4,
    "eval_windows": 16,
    "evals": 2,
}


def read_log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / mdlm.LOG_FILE).read_text().splitlines()]


def test_training_lowers_the_heldout_loss(tmp_path, streams, tokenizer):
    options = mdlm.TrainOptions(**TINY, steps=40)
    record = mdlm.train(tmp_path, options, streams=streams, tokenizer=tokenizer, log_every=5)
    evals = [line["eval"] for line in read_log(tmp_path) if "eval" in line]
    assert evals[0]["loss"] > math.log(code_data.VOCAB_SIZE) - 0.1, "an untrained model is near uniform"
    assert evals[-1]["loss"] < evals[0]["loss"] - 1.0
    assert record["step"] == 40 and record["tokens_seen"] == 40 * 8 * 64
    assert record["heldout_eval"] == evals[-1]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, streams, tokenizer):
    options = mdlm.TrainOptions(**TINY, steps=9, seed=3)
    mdlm.train(tmp_path / "whole", options, streams=streams, tokenizer=tokenizer, log_every=1)
    mdlm.train(tmp_path / "parts", options, streams=streams, tokenizer=tokenizer, log_every=1, stop_at=4)
    assert torch.load(tmp_path / "parts" / mdlm.STATE_FILE, weights_only=False)["step"] == 4
    with pytest.raises(ValueError, match="already holds a run"):
        mdlm.train(tmp_path / "parts", options, streams=streams, tokenizer=tokenizer)
    other = mdlm.TrainOptions(**{**TINY, "lr": 1.0}, steps=2)  # ignored: the state's options are used
    mdlm.train(tmp_path / "parts", other, streams=streams, tokenizer=tokenizer, log_every=1, resume=True)
    whole = torch.load(tmp_path / "whole" / mdlm.STATE_FILE, weights_only=False)
    parts = torch.load(tmp_path / "parts" / mdlm.STATE_FILE, weights_only=False)
    assert whole["step"] == parts["step"] == 9
    for key, value in whole["model"].items():
        assert torch.equal(value, parts["model"][key]), key
    for a, b in zip(whole["optimizer"]["state"].values(), parts["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    losses = {
        name: [(r["step"], r["loss"]) for r in read_log(tmp_path / name) if "loss" in r] for name in ("whole", "parts")
    }
    assert losses["whole"] == losses["parts"] and len(losses["whole"]) == 9


def test_checkpoint_loads_with_load_llada(tmp_path, streams, tokenizer):
    options = mdlm.TrainOptions(**TINY, steps=3)
    mdlm.train(tmp_path, options, streams=streams, tokenizer=tokenizer)
    state = torch.load(tmp_path / mdlm.STATE_FILE, weights_only=False)["model"]
    model = load_llada(tmp_path, dtype=torch.float32)
    assert model.config == mdlm.code_model_config(options)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].to(torch.bfloat16).float()), key
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path)).mask_token_id == model.config.mask_token_id == 2
    record = json.loads((tmp_path / mdlm.RUN_FILE).read_text())
    assert record["heldout_list_sha256"] and record["parameters"] == sum(p.numel() for p in model.parameters())


def test_command_line_options():
    parser = argparse.ArgumentParser()
    train_mdlm.add_parser(parser.add_subparsers())
    args = parser.parse_args(["mdlm", "--out", "x", "--steps", "5", "--d-model", "64", "--dtype", "float32"])
    options = mdlm.TrainOptions(**{f: getattr(args, f) for f in mdlm.TrainOptions.__dataclass_fields__})
    assert options == mdlm.TrainOptions(steps=5, d_model=64, dtype="float32")
    assert args.device is None and args.compile is None and not args.resume  # the device is chosen when it runs
    assert train_mdlm.STATE_FILE == mdlm.STATE_FILE
    # the recorded command: --out and the flags away from their defaults, an absolute --out as a placeholder
    assert train_mdlm.shown_command(args) == "mdfast train mdlm --out x --d-model 64 --steps 5 --dtype float32"
    again = parser.parse_args(["mdlm", "--out", "/abs/runs", "--minutes", "150", "--threads", "1", "--no-compile"])
    assert train_mdlm.shown_command(again) == "mdfast train mdlm --out OUT --minutes 150 --no-compile --threads 1"


def test_train_mdlm_command_records_a_relative_command(tmp_path, streams, monkeypatch, capsys):
    """``mdfast train mdlm`` trains, records the command as typed from the repository root, and resumes."""
    monkeypatch.setattr(mdlm, "token_streams", lambda tokenizer, cache: streams)  # not the whole library
    monkeypatch.chdir(tmp_path)
    tiny = [f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]
    argv = ["train", "mdlm", "--out", "run", "--device", "cpu", "--quiet", "--stop-at", "2", "--steps", "3", *tiny]
    assert mdfast.cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert mdfast.cli.main(["train", "mdlm", "--out", "run", "--device", "cpu", "--quiet", "--resume"]) == 0
    record = json.loads((tmp_path / "run" / mdlm.RUN_FILE).read_text())
    assert record["step"] == 3
    assert record["command"].startswith("mdfast train mdlm --out run --device cpu --stop-at 2 --quiet --seq-len 64 ")
    assert record["resumed_with"] == ["mdfast train mdlm --out run --device cpu --resume --quiet"]
    assert mdfast.cli.main(argv) == 2, "a folder that holds a run is not overwritten"
    assert "already holds a run" in capsys.readouterr().err
    assert mdfast.cli.main(["train", "mdlm", "--out", "other", "--steps", "3", "--span-min", "0"]) == 2
    assert mdfast.cli.main(["train", "mdlm", "--out", "other"]) == 2, "neither --minutes nor --steps"


def test_the_shipped_record_names_its_heldout_list_and_no_machine_folder():
    record = json.loads((mdlm.SHIPPED_MODEL_DIR / mdlm.RUN_FILE).read_text())
    for command in (record["command"], *record["resumed_with"]):
        assert command.startswith("mdfast train mdlm --out runs/code_model "), command
    assert record["heldout_list"] == code_data.HELDOUT_FILE.name
    assert record["heldout_list_sha256"] == hashlib.sha256(code_data.HELDOUT_FILE.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# infilling cases
# ---------------------------------------------------------------------------------------------


def qualnames(code) -> set[str]:
    """The qualified names of every function compiled into ``code``."""
    names = set()
    for const in code.co_consts:
        if hasattr(const, "co_qualname"):
            names |= {const.co_qualname} | qualnames(const)
    return names


def test_infill_cases(tokenizer, split):
    held = split[1]
    files = {p: held[p] for p in sorted(held)[:6]}
    cases = code_infill_cases(tokenizer, n_cases=40, seq_len=256, files=files)
    again = code_infill_cases(tokenizer, n_cases=40, seq_len=256, files=files)
    assert len(cases) == 40 and [(c.path, c.function, c.span, c.span_chars) for c in cases] == [
        (c.path, c.function, c.span, c.span_chars) for c in again
    ]
    assert all(
        torch.equal(c.input_ids, d.input_ids) and torch.equal(c.target_ids, d.target_ids) for c, d in zip(cases, again)
    )
    file_ids = {}
    for case in cases:
        start, stop = case.span
        assert case.input_ids.shape == (256,) and 32 <= stop - start <= 128
        assert (case.input_ids[start:stop] == 2).all() and int((case.input_ids == 2).sum()) == stop - start
        # the window is the file's own tokens around the span
        if case.path not in file_ids:
            file_ids[case.path] = torch.tensor(tokenizer(case.source, add_special_tokens=False)["input_ids"])
        filled = case.input_ids.clone()
        filled[start:stop] = case.target_ids
        windows = file_ids[case.path].unfold(0, 256, 1)
        assert bool((windows == filled).all(dim=1).any()), "the window is 256 consecutive tokens of the file"
        # the span: whole lines of the named function's body, its tokens decode to its characters
        a, b = case.span_chars
        assert tokenizer.decode(case.target_ids.tolist()) == case.source[a:b]
        assert case.source[a:b].strip() == case.source[a:b].lstrip(" ") and case.source[b : b + 1] in ("\n", "")
        assert case.source[: a + 1].rsplit("\n", 1)[-1].strip() in ("", case.source[a : a + 1].strip())
        assert case.filled_source(case.target_ids, tokenizer) == case.source and case.filled_parses(
            case.target_ids, tokenizer
        )
        # inside the body of a function of that name, a name Python itself gives (co_qualname, 3.11+)
        line = case.source.count("\n", 0, a) + 1
        assert any(
            isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name == case.function.rsplit(".", 1)[-1]
            and n.body[0].lineno <= line <= n.end_lineno
            for n in ast.walk(ast.parse(case.source))
        )
        if sys.version_info >= (3, 11):
            assert case.function in qualnames(compile(case.source, case.path, "exec"))
    assert not parses("def f(:\n")


def test_grpo_records_and_rewards_on_real_cases(tokenizer, split, tmp_path, monkeypatch):
    held = split[1]
    files = {p: held[p] for p in sorted(held)[:3]}
    cases = code_infill_cases(tokenizer, n_cases=4, seq_len=256, files=files)
    records = [json.loads(json.dumps(code_cases.training_record(c))) for c in cases]
    columns = {key: [r[key] for r in records] for key in records[0] if key != "input_ids"}
    truth = [r["target"] for r in records]
    text = tokenizer.batch_decode(truth, skip_special_tokens=True)
    assert code_cases.filled_file_parses(None, text, truth, **columns) == [1.0] * 4
    assert code_cases.span_token_accuracy(None, text, truth, **columns) == [1.0] * 4
    # a fill that breaks the file, and one wrong token in four
    broken = ["def (:" for _ in records]
    assert code_cases.filled_file_parses(None, broken, truth, **columns) == [0.0] * 4
    quarter = [[t if i % 4 else (t + 1) % 4096 for i, t in enumerate(ids)] for ids in truth]
    expected = [sum(i % 4 != 0 for i in range(len(ids))) / len(ids) for ids in truth]
    assert code_cases.span_token_accuracy(None, text, quarter, **columns) == pytest.approx(expected)
    assert all(torch.equal(torch.tensor(r["input_ids"]), c.input_ids) for r, c in zip(records, cases))
    with pytest.raises(ValueError, match="target"):
        code_cases.span_token_accuracy(None, text, [ids[1:] for ids in truth], **columns)
    with pytest.raises(TypeError, match="completions: expected decoded text"):
        code_cases.filled_file_parses(None, truth, truth, **columns)
    # the command writes the same records for the same cases
    monkeypatch.setattr(code_data, "source_files", lambda: {**files, **{p: split[0][p] for p in sorted(split[0])[:2]}})
    out = tmp_path / "cases.jsonl"
    assert mdfast.cli.main(["data", "code-cases", "--split", "heldout", "--cases", "4", "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert mdfast.cli.main(["data", "code-cases", "--cases", "0", "--out", str(out)]) == 2


def test_code_split_command(split, monkeypatch, capsys):
    """``mdfast data code-split`` shows the split; it writes nothing unless asked."""
    train, held = split
    files = {p: train[p] for p in sorted(train)[:3]} | {p: held[p] for p in sorted(held)[:2]}
    monkeypatch.setattr(code_data, "source_files", lambda: files)
    listed = code_data.HELDOUT_FILE.read_bytes()
    assert mdfast.cli.main(["data", "code-split"]) == 0
    shown = capsys.readouterr().out
    assert "5 files; training 3 files" in shown and "held out 2 of" in shown
    assert code_data.HELDOUT_FILE.read_bytes() == listed


# ---------------------------------------------------------------------------------------------
# the shipped checkpoint
# ---------------------------------------------------------------------------------------------


def test_a_llada_folders_tokenizer_loads_quietly_and_as_the_code_tokenizer(capfd):
    """mdfast.loading.load_tokenizer on a LLaDA checkpoint: transformers does not know model_type "llada" and
    used to warn about it; the folder's tokenizer_config.json names the class, so config.json is not read."""
    from mdfast.loading import load_tokenizer

    folder = mdlm.SHIPPED_MODEL_DIR
    if not (folder / "tokenizer_config.json").is_file():
        pytest.skip(f"no code model is shipped ({folder} has no tokenizer)")
    capfd.readouterr()
    loaded = load_tokenizer(folder)
    assert "instantiate a model of type" not in capfd.readouterr().err
    text = "def f(x):\n    return x + 1  # [MASK]\n"
    assert loaded(text)["input_ids"] == code_data.load_tokenizer(folder)(text)["input_ids"]
    assert (loaded.mask_token_id, loaded.pad_token_id, loaded.eos_token_id) == (
        code_data.MASK_ID,
        code_data.PAD_ID,
        code_data.EOS_ID,
    )


def test_shipped_model_infills_a_heldout_function(streams):
    folder = mdlm.SHIPPED_MODEL_DIR
    if not (folder / "config.json").is_file():
        pytest.skip(f"no code model is shipped ({folder} has no checkpoint; see mdfast/code_model/pretrain.py)")
    model = load_llada(folder, dtype=torch.float32)
    tokenizer = code_data.load_tokenizer(folder)
    assert tokenizer.mask_token_id == model.config.mask_token_id == code_data.MASK_ID
    # it learned held-out code: 15 % of 8 held-out windows masked, the argmax right far above chance (1/4096);
    # training.json records 0.37 on the run's 64 held-out windows
    heldout = mdlm.heldout_set(streams[1], model.config.max_sequence_length, 8)
    accuracy = mdlm.evaluate(model, heldout, 8, torch.float32)["iid_r0.15/acc"]
    assert accuracy > 0.2, f"masked-token accuracy {accuracy:.3f} on held-out code"
    # and it infills a held-out function's span through mdfast.infill: context kept, no [MASK] left, reproducible
    held = code_data.split_files(code_data.source_files())[1]
    path = sorted(held)[0]
    case = code_infill_cases(tokenizer, n_cases=1, seq_len=model.config.max_sequence_length, files={path: held[path]})[
        0
    ]
    start, stop = case.span
    runs = [
        mdfast.infill(
            model, case.input_ids[None], steps=(stop - start) // 4, decoder=decoder, suppress_tokens=[code_data.MASK_ID]
        ).sequences[0]
        for decoder in ("low_confidence", "xflow", "xflow")
    ]
    for out in runs:
        assert torch.equal(out[:start], case.input_ids[:start]) and torch.equal(out[stop:], case.input_ids[stop:])
        assert not (out[start:stop] == code_data.MASK_ID).any()
    assert torch.equal(runs[1], runs[2])
