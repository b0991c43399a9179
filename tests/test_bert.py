"""BERT: HF names and layouts, padding masks, gradients, HF parity, MLM/NSP data, learning."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend
from tinyllm.models.bert import (BertConfig, BertForPreTraining, BertForSequenceClassification,
                                 BertModel, attention_mask_to_key_padding_mask,
                                 convert_hf_bert_state_dict, make_nsp_pairs, mask_tokens)

TINY = dict(vocab_size=13, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=8, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
PAD, CLS, SEP, MASK = 0, 1, 2, 3            # the special ids of the tests' toy vocabularies


def _np(a):
    return backend.asnumpy(a.data if isinstance(a, tl.Tensor) else a)


def _config(**kw):
    return BertConfig(**{**TINY, **kw})


def _make(cls, *args, seed=0, **kw):
    tl.manual_seed(seed)
    return cls(_config(**kw), *args)


def _batch():
    """Two sequences, the second padded at its last three positions (ids there arbitrary)."""
    ids = np.array([[CLS, 5, 6, 7, SEP, 8, 9, SEP], [CLS, 4, 11, SEP, 12, PAD, PAD, PAD]])
    types = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 0, 0, 0]])
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3])
    return ids, types, mask


# ----------------------------------------------------------------------------------------------
# names, shapes, init

def _expected_encoder_keys(prefix, C, I, V, P, TV, pooler=True):  # noqa: E741 (I: HF's size)
    L = f"{prefix}encoder.layer.0."
    keys = {
        f"{prefix}embeddings.word_embeddings.weight": (V, C),
        f"{prefix}embeddings.position_embeddings.weight": (P, C),
        f"{prefix}embeddings.token_type_embeddings.weight": (TV, C),
        f"{prefix}embeddings.LayerNorm.weight": (C,), f"{prefix}embeddings.LayerNorm.bias": (C,),
        L + "attention.self.query.weight": (C, C), L + "attention.self.query.bias": (C,),
        L + "attention.self.key.weight": (C, C), L + "attention.self.key.bias": (C,),
        L + "attention.self.value.weight": (C, C), L + "attention.self.value.bias": (C,),
        L + "attention.output.dense.weight": (C, C), L + "attention.output.dense.bias": (C,),
        L + "attention.output.LayerNorm.weight": (C,), L + "attention.output.LayerNorm.bias": (C,),
        L + "intermediate.dense.weight": (C, I), L + "intermediate.dense.bias": (I,),
        L + "output.dense.weight": (I, C), L + "output.dense.bias": (C,),
        L + "output.LayerNorm.weight": (C,), L + "output.LayerNorm.bias": (C,),
    }
    if pooler:
        keys.update({f"{prefix}pooler.dense.weight": (C, C), f"{prefix}pooler.dense.bias": (C,)})
    return keys


def test_state_dict_uses_hf_names_and_tinyllm_layouts():
    C, I, V, P, TV = 8, 16, 13, 8, 2  # noqa: E741 (I: intermediate_size)
    m = _make(BertModel)
    expected = _expected_encoder_keys("", C, I, V, P, TV)
    assert list(m.state_dict()) == list(expected)                       # HF's order too
    assert {k: v.shape for k, v in m.state_dict().items()} == expected
    assert m.num_parameters() == 872
    assert list(_make(BertModel, False).state_dict()) == list(expected)[:-2]   # no pooler

    pt = _make(BertForPreTraining)
    expected_pt = _expected_encoder_keys("bert.", C, I, V, P, TV)
    expected_pt.update({
        "cls.predictions.bias": (V,),
        "cls.predictions.transform.dense.weight": (C, C),
        "cls.predictions.transform.dense.bias": (C,),
        "cls.predictions.transform.LayerNorm.weight": (C,),
        "cls.predictions.transform.LayerNorm.bias": (C,),
        "cls.predictions.decoder.weight": (V, C),                        # tied: word embeddings
        "cls.predictions.decoder.bias": (V,),                            # tied: predictions.bias
        "cls.seq_relationship.weight": (C, 2), "cls.seq_relationship.bias": (2,),
    })
    assert list(pt.state_dict()) == list(expected_pt)
    assert {k: v.shape for k, v in pt.state_dict().items()} == expected_pt
    assert pt.cls.predictions.decoder.weight is pt.bert.embeddings.word_embeddings.weight
    assert pt.cls.predictions.decoder.bias is pt.cls.predictions.bias
    assert sum(1 for _ in pt.parameters()) == len(expected_pt) - 2        # tied counted once
    assert pt.num_parameters() == 872 + V + (C * C + C) + 2 * C + (C * 2 + 2)

    sc = _make(BertForSequenceClassification, 3)
    assert list(sc.state_dict())[-2:] == ["classifier.weight", "classifier.bias"]
    assert sc.classifier.weight.shape == (C, 3)
    assert sc.num_parameters() == 872 + C * 3 + 3


def test_init_follows_hf():
    m = _make(BertModel, hidden_size=64, intermediate_size=256, vocab_size=200)
    w = _np(m.encoder.layer[0].intermediate.dense.weight)
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
    assert abs(_np(m.embeddings.position_embeddings.weight).std() - 0.02) < 0.003
    assert (_np(m.embeddings.word_embeddings.weight)[PAD] == 0).all()
    assert (_np(m.encoder.layer[0].attention.self.query.bias) == 0).all()
    assert (_np(m.encoder.layer[0].output.LayerNorm.weight) == 1).all()
    pt = _make(BertForPreTraining)
    assert (_np(pt.cls.predictions.bias) == 0).all()
    assert (_np(pt.cls.seq_relationship.bias) == 0).all()


def test_output_shapes_and_errors():
    m = _make(BertModel)
    ids, types, mask = _batch()
    seq, pooled = m(ids, types, mask)
    assert seq.shape == (2, 8, 8) and pooled.shape == (2, 8)
    assert _make(BertModel, False)(ids)[1] is None
    mlm, nsp = _make(BertForPreTraining)(ids, types, mask)
    assert mlm.shape == (2, 8, 13) and nsp.shape == (2, 2)
    assert _make(BertForSequenceClassification, 3)(ids).shape == (2, 3)
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_position_embeddings 8"):
        m(np.ones((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"input_ids must be \(B, T\)"):
        m(np.ones(5, dtype=np.int64))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 8\)"):
        m(ids, attention_mask=np.ones((2, 7)))
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        BertConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        BertConfig(hidden_act="swish")


# ----------------------------------------------------------------------------------------------
# padding

def test_padded_keys_get_zero_attention_weight_and_zero_gradient():
    m = _make(BertModel).double().eval()
    ids, types, mask = _batch()
    kpm = attention_mask_to_key_padding_mask(mask)
    assert kpm.shape == (2, 1, 1, 8) and kpm[1, 0, 0].tolist() == [False] * 5 + [True] * 3
    emb = m.embeddings(ids, types)
    _, w = m.encoder.layer[0].attention.self(emb, attn_mask=kpm, need_weights=True)  # (B, H, T, T)
    w = _np(w)
    assert (w[1, :, :, 5:] == 0).all() and (w[1, :, :, :5] > 0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)

    # through the whole encoder: a loss on real positions only never reaches padded tokens
    x = tl.tensor(_np(emb), requires_grad=True)
    real = mask[..., None].astype(np.float64)
    (m.encoder(x, kpm) * real).sum().backward()
    g = _np(x.grad)
    assert (g[1, 5:] == 0).all()
    assert (np.abs(g[1, :5]).sum(-1) > 0).all() and (np.abs(g[0]).sum(-1) > 0).all()

    # and in the full model: padded ids that occur nowhere else get no embedding gradient
    ids2 = ids.copy()
    ids2[1, 5:] = [10, 10, 10]
    m.zero_grad()
    seq, pooled = m(ids2, types, mask)
    ((seq * real).sum() + pooled.sum()).backward()
    gw = _np(m.embeddings.word_embeddings.weight.grad)
    assert (gw[10] == 0).all() and (np.abs(gw[[5, 6, 7, 11, 12]]).sum(-1) > 0).all()


def test_real_positions_do_not_depend_on_padding_ids():
    m = _make(BertForPreTraining).double().eval()
    ids, types, mask = _batch()
    seq, pooled = m.bert(ids, types, mask)
    mlm, nsp = m(ids, types, mask)
    ids2, types2 = ids.copy(), types.copy()
    ids2[1, 5:] = [7, 12, 3]
    types2[1, 5:] = 1
    seq2, pooled2 = m.bert(ids2, types2, mask)
    mlm2, nsp2 = m(ids2, types2, mask)
    np.testing.assert_allclose(_np(seq2)[1, :5], _np(seq)[1, :5], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_np(seq2)[0], _np(seq)[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_np(pooled2), _np(pooled), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_np(mlm2)[1, :5], _np(mlm)[1, :5], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_np(nsp2), _np(nsp), rtol=1e-13, atol=1e-15)
    # without the mask the padding does leak in
    seq3, _ = m.bert(ids2, types2)
    assert np.abs(_np(seq3)[1, :5] - _np(m.bert(ids, types)[0])[1, :5]).max() > 1e-3


# ----------------------------------------------------------------------------------------------
# gradients

def test_bert_model_gradcheck_full_float64():
    # [PAD]'s row gets no gradient by design (padding_idx), so the inputs avoid id 0; the last
    # two positions of row 1 are masked out by attention_mask instead
    m = _make(BertModel, vocab_size=7, max_position_embeddings=5).double().eval()
    ids = np.array([[1, 3, 4, 2, 6], [1, 5, 2, 6, 6]])
    types = np.array([[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert tl.gradcheck_module(m, ids, types, mask)                     # every parameter


def test_pretraining_loss_gradcheck_directional_with_dropout():
    m = _make(BertForPreTraining, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1).double()
    ids, types, mask = _batch()
    ids = np.where(ids == PAD, 6, ids)
    labels = np.full_like(ids, -100)
    labels[0, 2], labels[0, 6], labels[1, 2] = 6, 9, 11
    nsp = np.array([0, 1])

    class Loss(tl.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self):
            tl.manual_seed(5)                                          # same dropout masks
            return self.m(ids, types, mask, labels=labels, next_sentence_label=nsp)[2]

    assert tl.gradcheck_module(Loss(), mode="directional")


def test_pretraining_loss_is_mlm_plus_nsp_cross_entropy():
    m = _make(BertForPreTraining).double().eval()
    ids, types, mask = _batch()
    labels = np.full_like(ids, -100)
    labels[0, 1], labels[1, 2] = 5, 4
    nsp = np.array([1, 0])
    mlm, nsp_logits, loss = m(ids, types, mask, labels=labels, next_sentence_label=nsp)
    lp = _np(tl.log_softmax(mlm).data)
    lq = _np(tl.log_softmax(nsp_logits).data)
    mlm_term, nsp_term = -(lp[0, 1, 5] + lp[1, 2, 4]) / 2, -(lq[0, 1] + lq[1, 0]) / 2
    assert loss.item() == pytest.approx(mlm_term + nsp_term, rel=1e-12)
    # one set of labels: that term alone
    assert m(ids, types, mask, labels=labels)[2].item() == pytest.approx(mlm_term, rel=1e-12)
    assert m(ids, types, mask, next_sentence_label=nsp)[2].item() == pytest.approx(nsp_term,
                                                                                   rel=1e-12)


# ----------------------------------------------------------------------------------------------
# checkpoints

def _fake_hf_checkpoint(model):
    """What HF's save_pretrained would write for ``model``: (out, in) Linear weights, TF-era
    LayerNorm gamma/beta names, the position_ids buffer, tied copies left out."""
    sd = {}
    for k, v in model.state_dict().items():
        a = _np(v).copy()
        if k.startswith("cls.predictions.decoder."):
            continue
        if k.endswith(".weight") and a.ndim == 2 and "_embeddings" not in k:
            a = a.T.copy()
        sd[k.replace("LayerNorm.weight", "LayerNorm.gamma")
           .replace("LayerNorm.bias", "LayerNorm.beta")] = a
    sd["bert.embeddings.position_ids"] = np.arange(8)[None]
    return sd


def test_convert_hf_state_dict_round_trip():
    src = _make(BertForPreTraining, seed=1)
    hf = _fake_hf_checkpoint(src)
    assert hf["cls.seq_relationship.weight"].shape == (2, 8)
    assert hf["bert.encoder.layer.0.intermediate.dense.weight"].shape == (16, 8)
    sd = convert_hf_bert_state_dict(hf)
    assert "bert.embeddings.position_ids" not in sd
    assert sd["bert.encoder.layer.0.intermediate.dense.weight"].shape == (8, 16)
    assert sd["cls.predictions.decoder.weight"] is sd["bert.embeddings.word_embeddings.weight"]
    dst = BertForPreTraining.from_hf_state_dict(hf, _config())
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(_np(dst.state_dict()[k]), _np(v), err_msg=k)
    # the bare encoder from the same checkpoint: "bert." stripped, heads dropped
    enc = BertModel.from_hf_state_dict(hf, _config())
    assert enc.pooler is not None
    ids, types, mask = _batch()
    np.testing.assert_array_equal(_np(enc(ids, types, mask)[0]),
                                  _np(src.bert(ids, types, mask)[0]))
    no_pool = {k: v for k, v in hf.items() if "pooler" not in k}
    assert BertModel.from_hf_state_dict(no_pool, _config()).pooler is None


HF_TINY = dict(vocab_size=13, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=16, max_position_embeddings=8, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)


def _hf_model(transformers, torch, cls, **kw):
    cfg = transformers.BertConfig(**HF_TINY, **kw)
    torch.manual_seed(0)
    hf = getattr(transformers, cls)._from_config(cfg, attn_implementation="eager")
    hf = hf.double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                     # away from the init: non-trivial biases and norms
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
            p.copy_(noise + 1.0 if "LayerNorm.weight" in name else noise)
    return hf


def _converted(torch_sd):
    return convert_hf_bert_state_dict({k: v.detach().numpy() for k, v in torch_sd.items()})


def _assert_grads_match(ours, hf):
    hf_grads = _converted({k: p.grad for k, p in hf.named_parameters()})
    names = [k for k, _ in ours.named_parameters()]                  # tied ones once
    assert set(names) <= set(hf_grads) and len(names) == len(list(hf.parameters()))
    for k, p in ours.named_parameters():
        np.testing.assert_allclose(_np(p.grad), hf_grads[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_matches_hf_transformers_bert_for_pretraining():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = _hf_model(transformers, torch, "BertForPreTraining")
    ours = BertForPreTraining(BertConfig(**HF_TINY)).double().eval()
    ours.load_state_dict(_converted(hf.state_dict()), strict=True)

    ids, types, mask = _batch()
    labels = np.full_like(ids, -100)
    labels[0, 1], labels[0, 5], labels[1, 2], labels[1, 4] = 5, 8, 4, 12
    nsp = np.array([0, 1])
    t = lambda a: torch.tensor(a)                                       # noqa: E731
    out = hf(input_ids=t(ids), token_type_ids=t(types), attention_mask=t(mask),
             labels=t(labels), next_sentence_label=t(nsp))
    base = hf.bert(input_ids=t(ids), token_type_ids=t(types), attention_mask=t(mask))
    mlm, nsp_logits, loss = ours(ids, types, mask, labels=labels, next_sentence_label=nsp)
    seq, pooled = ours.bert(ids, types, mask)

    close = dict(rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_np(seq), base.last_hidden_state.detach().numpy(), **close)
    np.testing.assert_allclose(_np(pooled), base.pooler_output.detach().numpy(), **close)
    np.testing.assert_allclose(_np(mlm), out.prediction_logits.detach().numpy(), **close)
    np.testing.assert_allclose(_np(nsp_logits), out.seq_relationship_logits.detach().numpy(),
                               **close)
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-9)

    out.loss.backward()
    loss.backward()
    _assert_grads_match(ours, hf)                                      # every parameter


def test_matches_hf_transformers_sequence_classification():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = _hf_model(transformers, torch, "BertForSequenceClassification", num_labels=3)
    ours = BertForSequenceClassification(BertConfig(**HF_TINY), 3).double().eval()
    ours.load_state_dict(_converted(hf.state_dict()), strict=True)
    ids, types, mask = _batch()
    labels = np.array([2, 0])
    t = lambda a: torch.tensor(a)                                       # noqa: E731
    out = hf(input_ids=t(ids), token_type_ids=t(types), attention_mask=t(mask), labels=t(labels))
    logits, loss = ours(ids, types, mask, labels=labels)
    np.testing.assert_allclose(_np(logits), out.logits.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-9)
    out.loss.backward()
    loss.backward()
    _assert_grads_match(ours, hf)


# ----------------------------------------------------------------------------------------------
# data

def test_mask_tokens_statistics():
    rng = np.random.default_rng(0)
    V, specials = 1000, [PAD, CLS, SEP, MASK]
    ids = rng.integers(4, V, (2000, 64))
    ids[:, 0], ids[:, -1] = CLS, SEP
    lengths = rng.integers(10, 64, 2000)
    ids[np.arange(64) >= lengths[:, None]] = PAD
    ids[np.arange(2000), lengths - 1] = SEP
    masked, labels = mask_tokens(ids, np.random.default_rng(1), V, MASK, specials)
    assert masked.shape == labels.shape == ids.shape and masked.dtype == np.int64

    special = np.isin(ids, specials)
    selected = labels != -100
    assert not (selected & special).any()                              # specials, padding kept
    np.testing.assert_array_equal(masked[~selected], ids[~selected])   # unselected unchanged
    np.testing.assert_array_equal(labels[selected], ids[selected])     # labels: the original id
    assert abs(selected.sum() / (~special).sum() - 0.15) < 0.003       # ~82k candidates

    to_mask = masked[selected] == MASK
    kept = masked[selected] == ids[selected]
    random = ~to_mask & ~kept
    n = selected.sum()
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.006                  # (+ 1/996 random draws of itself)
    assert abs(random.sum() / n - 0.1) < 0.006
    assert not np.isin(masked[selected][random], specials).any()      # random ids are not special
    assert masked[selected][random].min() >= 4 and masked[selected][random].max() >= V - 20

    again, labels2 = mask_tokens(ids, np.random.default_rng(1), V, MASK, specials)
    np.testing.assert_array_equal(again, masked)                       # seeded: reproducible
    np.testing.assert_array_equal(labels2, labels)


def _documents(rng, n_docs=12):
    """Documents whose sentences are unique: sentence i of document d starts with 100 d + i."""
    docs = []
    for d in range(n_docs):
        docs.append([[100 * d + 10 + i] + rng.integers(4, 99, rng.integers(1, 7)).tolist()
                     for i in range(rng.integers(2, 6))])
    return docs


def test_make_nsp_pairs_layout_and_labels():
    docs = _documents(np.random.default_rng(0))
    out = make_nsp_pairs(docs, np.random.default_rng(1), 18, CLS, SEP, PAD)
    keys = ("input_ids", "token_type_ids", "attention_mask", "next_sentence_label")
    ids, types, mask, label = (out[k] for k in keys)
    N = sum(len(d) - 1 for d in docs)
    assert ids.shape == types.shape == mask.shape == (N, 18) and label.shape == (N,)
    assert label.sum() == N // 2 and set(label.tolist()) == {0, 1}
    where = {s[0]: (d, i) for d, doc in enumerate(docs) for i, s in enumerate(doc)}
    for n in range(N):
        L = int(mask[n].sum())
        assert (mask[n, :L] == 1).all() and (mask[n, L:] == 0).all() and (ids[n, L:] == PAD).all()
        seps = np.flatnonzero(ids[n] == SEP).tolist()
        assert ids[n, 0] == CLS and len(seps) == 2 and seps[1] == L - 1
        assert (types[n, :seps[0] + 1] == 0).all() and (types[n, seps[0] + 1:L] == 1).all()
        assert (types[n, L:] == 0).all()
        (da, ia), (db, ib) = where[ids[n, 1]], where[ids[n, seps[0] + 1]]
        a, b = docs[da][ia], docs[db][ib]
        assert ids[n, 1:seps[0]].tolist() == a and ids[n, seps[0] + 1:L - 1].tolist() == b
        if label[n] == 0:
            assert (db, ib) == (da, ia + 1)                            # the true next sentence
        else:
            assert db != da                                            # from another document


def test_make_nsp_pairs_truncates_the_longer_sentence_and_checks_inputs():
    docs = [[[10] + [5] * 9, [11, 6]], [[20, 7, 7], [21] + [8] * 9]]
    out = make_nsp_pairs(docs, np.random.default_rng(0), 8, CLS, SEP, PAD)
    assert (out["attention_mask"] == 1).all()                          # all cut to exactly 8
    assert (out["input_ids"][:, [0, -1]] == [CLS, SEP]).all()
    with pytest.raises(ValueError, match="at least two documents"):
        make_nsp_pairs(docs[:1], np.random.default_rng(0), 8, CLS, SEP)
    with pytest.raises(ValueError, match="no room"):
        make_nsp_pairs(docs, np.random.default_rng(0), 4, CLS, SEP)


# ----------------------------------------------------------------------------------------------
# learning and fine-tuning

SMALL = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=16)


def _nsp_batch(seed=0):
    rng = np.random.default_rng(seed)
    docs = [[[int(t) for t in rng.integers(4, 40, rng.integers(2, 5))] for _ in range(3)]
            for _ in range(4)]
    return make_nsp_pairs(docs, rng, 12, CLS, SEP, PAD)                 # 8 pairs


def test_pretraining_overfits_one_batch():
    from tinyllm.optim import AdamW
    batch = _nsp_batch()
    masked, labels = mask_tokens(batch["input_ids"], np.random.default_rng(2), 40, MASK,
                                 [PAD, CLS, SEP, MASK], mlm_probability=0.3)
    m = _make(BertForPreTraining, **SMALL, seed=1)                     # dropout 0
    opt = AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(120):
        *_, loss = m(masked, batch["token_type_ids"], batch["attention_mask"], labels=labels,
                     next_sentence_label=batch["next_sentence_label"])
        if step == 0:
            first = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > np.log(36) and loss.item() < 0.05                  # MLM ~ log V + NSP ~ log 2


def test_sequence_classification_full_fine_tuning_overfits():
    from tinyllm.optim import AdamW
    batch = _nsp_batch(1)
    labels = np.array([0, 1, 2, 0, 1, 2, 2, 1])
    m = _make(BertForSequenceClassification, 3, **SMALL)
    opt = AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(200):            # on the CPU it gets under 0.05 at step 42; on CuPy (other
        _, loss = m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                    labels)         # init, other dropout masks) it was at 0.28 after 60 steps
        losses.append(loss.item())
        if losses[-1] < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(losses[0] - np.log(3)) < 0.1 and losses[-1] < 0.05, losses[::20]


def test_freeze_base_trains_only_the_head():
    from tinyllm.optim import AdamW
    batch = _nsp_batch(1)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    labels = np.array([0, 1, 2, 0, 1, 2, 2, 1])
    # a stand-in for a pretrained base: at BERT's init (std 0.02) the pooled [CLS] vectors of
    # these inputs differ by ~4e-4, and a head on a frozen untrained base stays at chance;
    # with std 0.5 they differ by ~0.6 and a linear head can separate them
    m = _make(BertForSequenceClassification, 3, **SMALL, initializer_range=0.5).freeze_base()
    assert m.num_parameters(trainable_only=True) == 32 * 3 + 3
    _, loss = m(*args, labels)
    loss.backward()
    assert all(p.grad is None for p in m.bert.parameters())
    assert all(p.grad is not None for p in m.classifier.parameters())

    base = {k: _np(v).copy() for k, v in m.bert.state_dict().items()}
    head = _np(m.classifier.weight).copy()
    opt = AdamW(m.parameters(), lr=3e-2, weight_decay=0.01)            # frozen ones included
    for step in range(50):
        _, loss = m(*args, labels)
        if step == 0:
            first = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in m.bert.state_dict().items():
        np.testing.assert_array_equal(_np(v), base[k], err_msg=k)      # bitwise unchanged
    assert not np.array_equal(_np(m.classifier.weight), head)
    assert first > 1.0 and loss.item() < 0.1 * first    # CPU 1.68 -> 0.044, CuPy 2.61 -> 0.155

    m.unfreeze_base()
    assert m.num_parameters(trainable_only=True) == m.num_parameters()
