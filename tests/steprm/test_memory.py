"""Memory at real lengths: the implicit PRM never builds full-vocabulary logits, and micro-batches keep to a
padded-token budget (``max_token_len``). Figures: ``benchmarks/bench_steprm_memory.py``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_reward.steprm import objectives as obj
from spa_reward.steprm.service import StepRewardModel
from tests.steprm.helpers import synthetic_items, tiny_backbone


def test_taken_token_logprobs_equal_the_full_logits_in_value_and_gradient():
    torch.manual_seed(0)
    V, H, L = 50, 8, 7
    head = torch.nn.Linear(H, V, bias=False)
    hidden = torch.randn(2, L, H, requires_grad=True)
    ids = torch.randint(0, V, (2, L))
    full = obj.token_logprobs(head(hidden), ids)  # (2, L), the full-logits reference
    rows, pos = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 4, 2, 3, 6])
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])
    (full[rows, pos] * weights).sum().backward()
    g_full_h, g_full_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    # chunks of one position at a time (chunk_elements < V), under activation checkpointing
    lp = obj.taken_token_logprobs(hidden[rows, pos - 1], head, ids[rows, pos], V, chunk_elements=V)
    torch.testing.assert_close(lp, full[rows, pos].detach())
    (lp * weights).sum().backward()
    torch.testing.assert_close(hidden.grad, g_full_h)
    torch.testing.assert_close(head.weight.grad, g_full_w)
    assert obj.taken_token_logprobs(hidden[:0, 0], head, ids[:0, 0], V).shape == (0,)
    # soft-capped logits: tanh(l / c) * c before the log-softmax
    with torch.no_grad():
        capped = torch.log_softmax(torch.tanh(head(hidden[0, :1]) / 2.0) * 2.0, -1)[0, ids[0, 1]]
        got = obj.taken_token_logprobs(hidden[0, :1], head, ids[0, 1:2], V, softcap=2.0)
    assert math.isclose(float(got), float(capped), rel_tol=1e-5)


def test_token_budget_batches_by_hand():
    # lengths 10, 3, 8, 2, 20: longest first; <= 2 rows and <= 16 padded tokens per micro-batch
    assert obj.token_budget_batches([10, 3, 8, 2, 20], max_tokens=16, max_rows=2) == [[4], [0], [2, 1], [3]]
    assert obj.token_budget_batches([10, 3, 8, 2, 20], max_tokens=100, max_rows=8) == [[4, 0, 2, 1, 3]]
    assert obj.token_budget_batches([], 16, 2) == []
    with pytest.raises(ValueError, match="max_tokens=0"):
        obj.token_budget_batches([1], 0, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=30), st.integers(1, 120), st.integers(1, 6))
def test_token_budget_batches_invariants(lengths, max_tokens, max_rows):
    batches = obj.token_budget_batches(lengths, max_tokens, max_rows)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= max_rows
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens


def _implicit(**kw) -> StepRewardModel:
    torch.manual_seed(0)
    return StepRewardModel({**dict(objective="implicit", online=True, backbone_config=tiny_backbone(), lr=2e-3,
                                   beta=0.5, reference="frozen", device="cpu", micro_batch_size=32), **kw})


def _reference_q(svc: StepRewardModel, item: dict) -> list[float]:
    """beta * q_t of one item from the model's full logits (the formula, independent of the service's path)."""
    ids = torch.tensor([item["input_ids"]])
    with torch.no_grad():
        lp = obj.token_logprobs(svc.serving(input_ids=ids, use_cache=False).logits, ids)[0]
        ref = obj.token_logprobs(svc.reference(input_ids=ids, use_cache=False).logits, ids)[0]
    return [svc.settings.beta * float((lp[a:b] - ref[a:b]).sum()) for a, b in item["turn_spans"]]


def test_implicit_prm_never_builds_full_vocab_logits(monkeypatch):
    """The output layer only ever sees a chunk of turn positions (here 3 at a time), in scoring and in the update;
    the rewards are the full-logits formula's."""
    svc = _implicit()
    items, _ = synthetic_items(16, seed=0)
    svc.update(items)  # the models differ from the frozen reference from here on
    monkeypatch.setattr(obj, "LOGIT_CHUNK_ELEMENTS", 3 * svc.vocab_rows)
    seen = []
    for model in (svc.model, svc.serving, svc.reference):
        head = model.get_output_embeddings()
        head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    scores = svc.score(items[:4])
    for got, item in zip(scores, items[:4]):
        assert got == pytest.approx(_reference_q(svc, item), abs=1e-5)
    seen.clear()
    m = svc.update(items)
    assert m["steprm/pairs"] > 0 and seen and max(seen) <= 3, max(seen)


def test_micro_batches_keep_to_the_token_budget():
    """``max_token_len``: no forward sees more padded tokens than the budget (a longer sequence goes alone), and
    the rewards do not depend on how the batch was cut."""
    items, _ = synthetic_items(24, seed=1)
    longest = max(len(it["input_ids"]) for it in items)
    budget = 2 * longest
    small = _implicit(max_token_len=budget)
    shapes = []
    small.serving.get_input_embeddings().register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape)))
    small.model.get_input_embeddings().register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape)))
    got = small.score(items)
    assert shapes and max(r * n for r, n in shapes) <= budget
    assert any(r >= 2 for r, _ in shapes) and sum(r for r, _ in shapes) == len(items)
    whole = _implicit()
    for a, b in zip(got, whole.score(items)):
        assert a == pytest.approx(b, abs=1e-5)
    shapes.clear()
    small.update(items)
    assert max(r * n for r, n in shapes) <= budget
    with pytest.raises(ValueError, match="max_token_len=0 must be >= 1"):
        _implicit(max_token_len=0)


def test_a_model_whose_logits_are_not_the_output_layer_is_refused(monkeypatch):
    """A causal LM that scales its logits after the output layer would get wrong log-probs from the chunked path:
    refused at build, naming the model."""
    from transformers import LlamaForCausalLM

    real = LlamaForCausalLM.forward

    def scaled(self, *a, **kw):
        out = real(self, *a, **kw)
        out.logits = out.logits * 2.0
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", scaled)
    with pytest.raises(ValueError, match="LlamaForCausalLM does not compute its logits as output_layer"):
        _implicit()
