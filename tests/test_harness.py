"""The lm-evaluation-harness model ``mdfast`` and the shipped offline tasks, through lm-eval's own evaluator.

One ``lm_eval.simple_evaluate`` run on the shipped code model with every shipped task (limit 4, a small budget)
is shared by the structure and range checks; the Monte Carlo log-likelihood is checked against a row-by-row
reference and on a model whose answer is known; generate_until against ``mdfast eval humaneval``'s completion.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from checks import tiny_bert

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'mdfast[harness]')")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import mdfast.harness as harness  # noqa: E402
from mdfast import cli  # noqa: E402
from mdfast.code_model.shipped import SHIPPED_MODEL_DIR  # noqa: E402
from mdfast.harness import loglikelihood as ll  # noqa: E402
from mdfast.harness.generation import cut_at_stop  # noqa: E402
from mdfast.harness.tasks import data as task_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
MODEL_ARGS = {
    "pretrained": str(SHIPPED_MODEL_DIR),
    "decoder": "xflow",
    "steps": 8,
    "block_length": 16,
    "gen_length": 32,
    "mc_samples": 2,
    "batch_size": 8,
}
LIMIT = 4


@pytest.fixture(scope="module")
def lm():
    return harness.MDFastLM(**MODEL_ARGS)


@pytest.fixture(scope="module")
def results():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    manager = TaskManager(include_path=str(harness.TASKS_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(
        model="mdfast",
        model_args=dict(MODEL_ARGS),
        tasks=list(harness.TASK_NAMES),
        limit=LIMIT,
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=True,
        confirm_run_unsafe_code=True,
    )


# ---------------------------------------------------------------------------------------------------------------
# lm-eval's evaluator on the shipped tasks
# ---------------------------------------------------------------------------------------------------------------

METRICS = {
    "mdfast_humaneval": ("pass@1",),
    "mdfast_code_infill": ("exact_match", "parses"),
    "mdfast_code_choice": ("acc", "acc_norm"),
}


def test_every_shipped_task_scores_in_range(results):
    assert set(METRICS) == set(harness.TASK_NAMES)
    for task, metrics in METRICS.items():
        row = results["results"][task]
        assert results["n-samples"][task]["effective"] == LIMIT
        for metric in metrics:
            value = row[f"{metric},none"]
            assert 0.0 <= value <= 1.0, f"{task} {metric} = {value}"
            assert value * LIMIT == pytest.approx(round(value * LIMIT)), "a mean of 0/1 scores over 4 documents"


def test_the_results_record_the_decoding_settings(results):
    config = results["config"]
    assert config["model"] == "mdfast"
    assert config["model_family"] == "llada"
    decoding = config["decoding"]
    assert (decoding["decoder"], decoding["steps"], decoding["block_length"]) == ("xflow", 8, 16)
    assert decoding["eos_token_id"] == 1 and decoding["cache"] is None
    assert config["gen_length"] == 32 and config["loglikelihood"]["mc_samples"] == 2
    json.dumps(config)  # the config is plain JSON


def test_the_samples_hold_what_the_model_returned(results):
    samples = results["samples"]
    for doc in samples["mdfast_code_choice"]:
        scores = doc["filtered_resps"]
        assert len(scores) == 4
        for logp, greedy in scores:
            assert math.isfinite(logp) and logp < 0 and isinstance(greedy, bool)
    for doc in samples["mdfast_code_infill"]:
        (fill,) = doc["filtered_resps"]
        assert isinstance(fill, str) and fill, "an infilling response is the decoded span's text"
        assert doc["doc"]["context"].count("[MASK]") == doc["doc"]["masks"]
    for doc in samples["mdfast_humaneval"]:
        (completion,) = doc["filtered_resps"]
        assert not any(stop in completion for stop in ("\ndef", "\nclass", "\nif", "\nprint", "\n#"))


def test_the_infilling_contexts_are_the_cases_windows(results, lm):
    """A context encodes to the 256-token window, the span's masks in a row; with the span's text it is the file's."""
    docs = task_data.infill_docs(256, 0)  # built by the evaluation above (cached)
    assert len(docs) == 256
    mask = lm.tokenizer.mask_token
    for doc in docs[:16]:
        ids = lm.tokenizer(doc["context"], add_special_tokens=False)["input_ids"]
        assert len(ids) == 256 and ids.count(lm.mask_token_id) == doc["masks"]
        assert doc["source"][doc["span_start"] : doc["span_stop"]] == doc["target"]
        assert doc["context"].replace(mask * doc["masks"], doc["target"]) in doc["source"]


def test_the_choice_documents_are_deterministic_and_hold_the_true_line():
    docs = task_data.choice_docs.__wrapped__(16, 3)
    assert docs == task_data.choice_docs.__wrapped__(16, 3)
    files = task_data.heldout_files()
    for doc in docs:
        assert len(set(doc["choices"])) == 4
        truth = doc["choices"][doc["label"]]
        assert doc["context"] + truth + "\n" in files[doc["path"]]


# ---------------------------------------------------------------------------------------------------------------
# loglikelihood
# ---------------------------------------------------------------------------------------------------------------


def test_the_masking_draws_mask_at_least_one_token_at_stratified_ratios():
    draws = ll.masking_draws(10, 5, torch.Generator().manual_seed(0))
    assert draws == ll.masking_draws(10, 5, torch.Generator().manual_seed(0))
    counts = [len(d) for d in draws]
    assert all(1 <= k <= 10 for k in counts) and counts == sorted(counts)
    assert [(k - 1) // 2 for k in counts] == [0, 1, 2, 3, 4], "one draw per fifth of the ratios"
    assert all(len(set(d)) == len(d) and all(0 <= i < 10 for i in d) for d in draws)


class ConstantAdapter:
    """A model whose log-probability of token v is the same at every position, whatever is masked."""

    mask_token_id = 0
    embedding = torch.zeros(1)

    def __init__(self, logits: torch.Tensor) -> None:
        self.table = logits

    def embed(self, ids):
        return ids

    def logits(self, embeds, attention_mask, positions):
        return self.table.expand(*positions.shape, -1).clone()


def test_the_estimate_is_exact_where_the_prediction_ignores_the_masks():
    """Each draw's (L / k) * sum over k masked tokens is then L * log p, so every estimate is exactly that."""
    table = torch.tensor([0.0, 1.0, 2.0, 0.5])
    logp = torch.log_softmax(table, -1)
    pairs = [([3, 1], [2, 2, 2]), ([1], [2]), ([1, 1, 1, 1], [1] * 7), ([3], [])]
    out = ll.mc_loglikelihood(ConstantAdapter(table), pairs, mc_samples=5, batch_size=3)
    assert out[0][0] == pytest.approx(3 * float(logp[2])) and out[0][1] is True
    assert out[1][0] == pytest.approx(float(logp[2])) and out[1][1] is True
    assert out[2][0] == pytest.approx(7 * float(logp[1])) and out[2][1] is False
    assert out[3] == (0.0, True)


def reference_loglikelihood(model, context, continuation, samples, seed):
    """The estimate computed one unpadded row at a time through the model's own forward."""
    generator = torch.Generator().manual_seed(ll._seed_of(seed, context, continuation))
    total, L = 0.0, len(continuation)
    for masked in ll.masking_draws(L, samples, generator):
        ids = torch.tensor([[*context, *continuation]])
        at = torch.tensor(masked) + len(context)
        ids[0, at] = model.mdfast_adapter.mask_token_id
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        total += L / len(masked) * float(logp[at, torch.tensor(continuation)[torch.tensor(masked)]].sum())
    return total / samples


def test_loglikelihood_is_the_row_by_row_estimate_and_deterministic(lm):
    requests = [
        Instance("loglikelihood", {}, ("def add(a, b):\n", "    return a + b"), 0),
        Instance("loglikelihood", {}, ("import os\nimport sys", "\nimport re"), 1),
        Instance("loglikelihood", {}, ("x = 1", " + 2"), 2),
    ]
    out = lm.loglikelihood(requests, disable_tqdm=True)
    assert out == lm.loglikelihood(requests[::-1], disable_tqdm=True)[::-1], "order and batch do not matter"
    for request, (value, greedy) in zip(requests, out):
        context, continuation = lm._encode_pair(*request.args)
        expected = reference_loglikelihood(lm.model, context, continuation, lm.settings.mc_samples, lm.settings.seed)
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert isinstance(greedy, bool)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A transformers masked LM (tiny BERT) with a BertTokenizer over 59 words: the path that is not LLaDA's."""
    folder = tmp_path_factory.mktemp("bert")
    tiny_bert().save_pretrained(folder)
    words = [f"w{i}" for i in range(59)]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def test_a_transformers_masked_lm_scores_and_generates(bert_folder):
    bert = harness.MDFastLM(
        pretrained=bert_folder, decoder="low_confidence", steps=4, block_length=4, gen_length=8, mc_samples=3
    )
    assert bert.adapter.family == "masked_lm" and bert.prefix == [bert.tokenizer.cls_token_id]
    pairs = [("w1 w2 w3", " w4 w5"), ("w7", " w8 w9 w10 w11"), ("w3 w3", " w3")]
    out = bert.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
    for pair, (value, _) in zip(pairs, out):
        context, continuation = bert._encode_pair(*pair)
        expected = reference_loglikelihood(bert.model, context, continuation, 3, 0)
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)
    requests = [
        Instance("generate_until", {}, ("w1 w2", {"until": ["w5"], "max_gen_toks": 8}), 0),
        Instance("generate_until", {}, ("w1 [MASK] [MASK] w4", {"until": []}), 1),
    ]
    generated, filled = bert.generate_until(requests, disable_tqdm=True)
    assert "w5" not in generated and set(generated.split()) <= {f"w{i}" for i in range(59)}
    assert len(bert.tokenizer(filled, add_special_tokens=False)["input_ids"]) == 2, "two masks, two tokens"


def test_loglikelihood_rolling_says_why_it_is_missing(lm):
    with pytest.raises(harness.RollingLoglikelihoodUnsupported, match="loglikelihood_rolling: not implemented"):
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("some text",), 0)])
    assert issubclass(harness.RollingLoglikelihoodUnsupported, NotImplementedError)


# ---------------------------------------------------------------------------------------------------------------
# generate_until and model_args
# ---------------------------------------------------------------------------------------------------------------


def test_stop_strings_cut_at_the_first_one():
    assert cut_at_stop("a\nb\ndef f\nclass", ["\nclass", "\ndef"]) == "a\nb"
    assert cut_at_stop("abc", []) == "abc" and cut_at_stop("abc", [""]) == "abc"


def test_generate_until_matches_mdfast_eval_humaneval(lm):
    from mdfast.eval.humaneval_benchmark import humaneval, load_problems

    problem = load_problems(1)[0]
    record = humaneval(lm.model, lm.tokenizer, steps=8, gen_length=32, block_length=16, problems=1, score=False)[0]
    until = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    request = Instance("generate_until", {}, (problem["prompt"], {"until": until, "max_gen_toks": 256}), 0)
    assert lm.generate_until([request], disable_tqdm=True) == [record["completion"]]


def test_unknown_or_unsettable_model_args_are_named():
    with pytest.raises(ValueError, match="frobnicate: not a model_args key"):
        harness.parse_model_args({"pretrained": "x", "frobnicate": 1})
    with pytest.raises(ValueError, match="generator: not settable"):
        harness.parse_model_args({"pretrained": "x", "generator": 1})
    with pytest.raises(ValueError, match="decoder: expected one of"):
        harness.parse_model_args({"pretrained": "x", "decoder": "nope"})
    with pytest.raises(ValueError, match="pretrained: required"):
        harness.parse_model_args({"steps": 4})
    settings = harness.parse_model_args(
        {"pretrained": "x", "decoder": "threshold", "tau": 0.8, "cache": "dual", "suppress_tokens": "2;5"}
    )
    assert (settings.decode.decoder, settings.decode.tau, settings.decode.cache) == ("threshold", 0.8, "dual")
    assert settings.decode.suppress_tokens == [2, 5]
    one = harness.parse_model_args({"pretrained": "x", "suppress_tokens": 2})  # lm-eval makes "2" an int
    assert one.decode.suppress_tokens == [2]


def test_a_budget_that_does_not_split_the_response_names_gen_length():
    lm = harness.MDFastLM(**{**MODEL_ARGS, "gen_length": 24})
    request = Instance("generate_until", {}, ("def f():", {"until": []}), 0)
    with pytest.raises(ValueError, match=r"block_length.*gen_length="):
        lm.generate_until([request], disable_tqdm=True)


# ---------------------------------------------------------------------------------------------------------------
# The command lines: mdfast eval harness, and lm-eval's own
# ---------------------------------------------------------------------------------------------------------------


def model_args_text(**changes) -> str:
    return ",".join(f"{k}={v}" for k, v in {**MODEL_ARGS, **changes}.items())


def test_mdfast_eval_harness_writes_the_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["eval", "harness", "--model_args", model_args_text(), "--tasks", "mdfast_code_choice", "--limit", "2"]
    assert cli.main([*argv, "--output_path", str(out)]) == 0
    assert "mdfast_code_choice" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["config"]["decoding"]["decoder"] == "xflow"
    assert 0.0 <= written["results"]["mdfast_code_choice"]["acc,none"] <= 1.0


def test_mdfast_eval_harness_names_a_bad_model_arg(capsys):
    status = cli.main(["eval", "harness", "--model_args", model_args_text(frobnicate=1), "--tasks", "mdfast"])
    assert status == 2 and "--model_args: frobnicate: not a model_args key" in capsys.readouterr().err


def test_lm_evals_own_command_line_runs_the_model():
    """``lm_eval`` itself, given a shipped YAML as --tasks: loading its functions registers the model.

    lm-eval's command line passes its own --batch_size and --device (default cuda:0, run on the CPU where there
    is no GPU), so model_args leave them out.
    """
    model_args = ",".join(f"{k}={v}" for k, v in MODEL_ARGS.items() if k != "batch_size")
    task = os.path.relpath(harness.TASKS_DIR / "mdfast_code_choice.yaml", ROOT)
    argv = ["--model", "mdfast", "--model_args", model_args, "--tasks", task, "--batch_size", "4", "--limit", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mdfast_code_choice" in done.stdout and "acc" in done.stdout
