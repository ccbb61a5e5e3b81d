"""ProgressEstimator: forward contract, heads, save/load round trips (plain and LoRA), dtypes."""

from __future__ import annotations

import json

import pytest
import torch
from progress_helpers import VOCAB, tiny_config

from spa_reward.progress.data import collate_sequences
from spa_reward.progress.model import (
    ProgressEstimator,
    ProgressEstimatorConfig,
    is_estimator_dir,
    predict_batched,
)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (20, 13, 7)]
    ends = [[3, 10, 19], [5, 12], [6]]
    return seqs, ends


@pytest.mark.parametrize("head", ["mlp", "linear", "logits_linear"])
def test_forward_contract(head):
    torch.manual_seed(0)
    model = ProgressEstimator(tiny_config(head=head)).eval()
    seqs, ends = _batch()
    batch = collate_sequences(seqs, ends)
    out = model(batch["input_ids"], batch["attention_mask"], batch["turn_end_positions"])
    assert out.shape == (3, 3) and out.dtype == torch.float32
    assert out[1, 2] == 0 and (out[2, 1:] == 0).all()  # padded turn slots are exactly 0
    # each row equals the unpadded single-sequence result (right padding does not leak)
    for i, (s, e) in enumerate(zip(seqs, ends)):
        single = model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long), torch.tensor([e]))
        torch.testing.assert_close(out[i, : len(e)], single[0], atol=1e-5, rtol=1e-5)
    # c_t depends only on tokens up to the turn end (causal): changing later tokens leaves it unchanged
    s = list(seqs[0])
    s[15] = (s[15] + 1) % VOCAB
    changed = model(torch.tensor([s]), None, torch.tensor([ends[0]]))
    torch.testing.assert_close(changed[0, :2], out[0, :2], atol=1e-5, rtol=1e-5)
    assert model.predict_turns(seqs[0], ends[0]) == pytest.approx(out[0].tolist(), abs=1e-5)


def test_gradients_reach_backbone_and_head():
    torch.manual_seed(0)
    model = ProgressEstimator(tiny_config())
    seqs, ends = _batch()
    b = collate_sequences(seqs, ends)
    loss = (model(b["input_ids"], b["attention_mask"], b["turn_end_positions"]).sum(1) - 1).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert model.base_backbone.get_input_embeddings().weight.grad.abs().sum() > 0


def test_bad_positions_are_rejected():
    model = ProgressEstimator(tiny_config())
    ids = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="past the sequence"):
        model(ids, None, torch.tensor([[5]]))
    with pytest.raises(ValueError, match="turn_end_positions must be"):
        model(ids, None, torch.tensor([3]))
    with pytest.raises(ValueError, match="head must be one of"):
        tiny_config(head="transformer")


@pytest.mark.parametrize("head", ["mlp", "linear", "logits_linear"])
def test_save_load_round_trip(tmp_path, head, tiny_tokenizer):
    torch.manual_seed(1)
    model = ProgressEstimator(tiny_config(head=head, head_hidden_size=16)).eval()
    model.save_pretrained(tmp_path, tokenizer=tiny_tokenizer)
    assert is_estimator_dir(tmp_path)
    assert (tmp_path / "head.safetensors").is_file() and (tmp_path / "backbone" / "config.json").is_file()
    assert (tmp_path / "tokenizer").is_dir()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "spa_progress_estimator" and cfg["head"] == head
    loaded = ProgressEstimator.from_pretrained(tmp_path, device="cpu")
    assert loaded.backbone_dtype == torch.float32
    seqs, ends = _batch(3)
    b = collate_sequences(seqs, ends)
    a = model(b["input_ids"], b["attention_mask"], b["turn_end_positions"])
    c = loaded(b["input_ids"], b["attention_mask"], b["turn_end_positions"])
    assert torch.equal(a, c)


@pytest.mark.parametrize("merge", [True, False])
def test_lora_round_trip(tmp_path, merge):
    pytest.importorskip("peft")
    torch.manual_seed(2)
    model = ProgressEstimator(tiny_config(lora_r=4, lora_alpha=8)).eval()
    assert model.has_lora
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and all("lora_" in n or n.startswith("head.") for n in trainable)
    with torch.no_grad():  # LoRA B starts at zero: perturb it so the adapter changes the outputs
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    seqs, ends = _batch(4)
    b = collate_sequences(seqs, ends)
    expected = model(b["input_ids"], b["attention_mask"], b["turn_end_positions"])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter").is_dir()
    loaded = ProgressEstimator.from_pretrained(tmp_path, merge_lora=merge)
    assert loaded.has_lora is (not merge)
    got = loaded(b["input_ids"], b["attention_mask"], b["turn_end_positions"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # merged save: a plain backbone, same outputs
    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert not (tmp_path / "merged" / "adapter").exists() and not model.has_lora
    merged = ProgressEstimator.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(merged(b["input_ids"], b["attention_mask"], b["turn_end_positions"]), expected, atol=1e-5, rtol=1e-5)


def test_dtype_argument(tmp_path):
    torch.manual_seed(0)
    ProgressEstimator(tiny_config()).save_pretrained(tmp_path)
    m = ProgressEstimator.from_pretrained(tmp_path, dtype="bfloat16")
    assert m.backbone_dtype == torch.bfloat16
    assert next(m.head.parameters()).dtype == torch.float32  # the head stays fp32
    seqs, ends = _batch()
    out = predict_batched(m, seqs, ends)
    assert [len(o) for o in out] == [3, 2, 1]
    ref = predict_batched(ProgressEstimator.from_pretrained(tmp_path), seqs, ends)
    for a, b in zip(out, ref):
        assert a == pytest.approx(b, abs=0.05)


def test_predict_batched_keeps_input_order_across_batches():
    torch.manual_seed(0)
    model = ProgressEstimator(tiny_config()).eval()
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, VOCAB, (int(n),), generator=g).tolist() for n in torch.randint(3, 40, (11,), generator=g)]
    ends = [[len(s) - 1] if i % 3 else [0, len(s) - 1] for i, s in enumerate(seqs)]
    ends[4] = []  # a sequence without turns is not run and gets []
    one = predict_batched(model, seqs, ends, max_batch_size=64)
    small = predict_batched(model, seqs, ends, max_batch_size=2, max_batch_tokens=50)
    assert one[4] == [] and small[4] == []
    for a, b in zip(one, small):
        assert a == pytest.approx(b, abs=1e-5)
    for i in (0, 7):
        assert one[i] == pytest.approx(model.predict_turns(seqs[i], ends[i]), abs=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="backbone"):
        ProgressEstimatorConfig()
    d = tiny_config().to_dict()
    d["model_type"] = "llama"
    with pytest.raises(ValueError, match="not a progress-estimator config"):
        ProgressEstimatorConfig.from_dict(d)
    d = tiny_config().to_dict()
    d["format_version"] = 99
    with pytest.raises(ValueError, match="newer"):
        ProgressEstimatorConfig.from_dict(d)


def test_missing_dir_names_path_and_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-here.*spa_reward\.progress\.train"):
        ProgressEstimator.from_pretrained(tmp_path / "nothing-here")
