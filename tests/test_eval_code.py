"""The code model's budget curve (mdfast/eval/code_benchmark.py, its command) and ``suppress_tokens`` in the loop.

``suppress_tokens``: for every decoder, the fast loop with some ids suppressed must give exactly the tokens of
test_infill's eager loop (written from SPEC 2, 3, 7) run on the same model with those logits set to -inf (the
output bias), in a batch whose rows hold different numbers of masks (so padding entries ride along, and the mask
id itself is among the suppressed ids); a suppressed id never appears among the decoded tokens.

The harness: on fake outputs made by hand, each metric (exact match, token accuracy, parse share, spans left
with a [MASK], agreement) is recomputed here; end to end, a tiny random LLaDA checkpoint saved in the test with
the shipped code tokenizer runs two decoders at two budgets through ``mdfast.eval.code`` and ``mdfast eval code``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import mdfast

transformers = pytest.importorskip("transformers", reason="the tests build tiny models from transformers classes")

from test_generate import MASK, tiny_bert  # noqa: E402
from test_infill import DECODERS, PATTERNS, eager_infill, masked_rows  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: the tiny models run in milliseconds, and threads only wait on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# suppress_tokens (mdfast/decode/loop.py)
# ---------------------------------------------------------------------------------------------


def without_logits(model, ids: list[int]):
    """A copy of the tiny BERT whose logits at ``ids`` are -inf (its output bias set to -inf there)."""
    blocked = copy.deepcopy(model)
    with torch.no_grad():
        blocked.get_output_embeddings().bias[ids] = -math.inf
    return blocked


@pytest.mark.parametrize("block_length", [None, 3], ids=["one_block", "blocks_of_3"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_suppressed_tokens_equal_the_eager_loop_without_those_logits(decoder, block_length):
    """Rows with 4, 5 and 6 masks; suppressed: the mask id and the two ids the plain run decodes most often, so
    the suppressed run must differ from the plain one."""
    model = tiny_bert(3)
    ids = masked_rows(3, 14, PATTERNS)
    decoded = ids == MASK
    plain = mdfast.infill(model, ids, steps=5, decoder=decoder, block_length=block_length, mask_token_id=MASK)
    frequent = torch.bincount(plain.sequences[decoded], minlength=64).argsort(descending=True, stable=True)[:2]
    suppress = [MASK, *frequent.tolist()]
    out = mdfast.infill(
        model, ids, steps=5, decoder=decoder, block_length=block_length, mask_token_id=MASK, suppress_tokens=suppress
    )
    want, _ = eager_infill(without_logits(model, suppress), ids, None, 5, decoder, block_length)
    assert torch.equal(out.sequences, want), f"{decoder}: fast {out.sequences.tolist()} != eager {want.tolist()}"
    assert not torch.isin(out.sequences[decoded], torch.tensor(suppress)).any(), "a suppressed id was decoded"
    assert not torch.equal(out.sequences, plain.sequences), "suppressing the most frequent ids changes the output"
    assert torch.equal(out.sequences[~decoded], ids[~decoded]), "given tokens are kept"


def test_generate_suppresses_too():
    model = mdfast.patch(tiny_bert(5), mask_token_id=MASK)
    prompt = torch.randint(5, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    plain = model.mdfast_generate(prompt, max_new_tokens=8, steps=4, decoder="low_confidence")
    top = int(torch.bincount(plain.sequences[:, 6:].reshape(-1), minlength=64).argmax())
    out = model.mdfast_generate(prompt, max_new_tokens=8, steps=4, decoder="low_confidence", suppress_tokens=[top])
    assert not (out.sequences[:, 6:] == top).any() and torch.equal(out.sequences[:, :6], prompt)


@pytest.mark.parametrize(
    "suppress, error, message",
    [
        ("[MASK]", TypeError, "suppress_tokens: expected a list of token ids"),
        ([4, 2.0], TypeError, "suppress_tokens: expected a list of token ids"),
        ([4, 64], ValueError, r"suppress_tokens: expected ids in \[0, 64\)"),
        ([-1], ValueError, r"suppress_tokens: expected ids in \[0, 64\)"),
        (list(range(64)), ValueError, "suppress_tokens: every one of the 64 ids"),
    ],
)
def test_bad_suppress_tokens_are_named_before_any_forward(suppress, error, message):
    model = tiny_bert()
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    with pytest.raises(error, match=message):
        mdfast.infill(model, masked_rows(1, 10, [[(2, 8)]]), steps=4, mask_token_id=MASK, suppress_tokens=suppress)
    assert not forwards, "the error comes before any forward"
