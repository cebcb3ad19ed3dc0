"""Token transforms: MLM rates within binomial tolerance and a function of (seed, epoch,
index), first-sub-token alignment equals sentence encoding, gathered MLM targets lose nothing.
(Packing, bucketing and resume are tests/test_batching.py.)"""
import numpy as np
import pytest

from lmx.data import transforms as tp
from lmx.hf.tokenizer import load_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "eu", "reject", "##s", "german",
         "call", "to", "boy", "##cott", "brit", "##ish", "lamb", ".", "peter", "black", "##burn"]


def test_mlm_masking_rates_within_binomial_tolerance():
    special, vocab_size, mask_id = [0, 1, 2, 3, 4], 1000, 4
    rng = np.random.default_rng(0)
    total = {"candidates": 0, "picked": 0, "mask": 0, "random": 0, "kept": 0}
    for index in range(400):
        ids = rng.integers(0, vocab_size, size=500)
        ids[0], ids[-1] = 2, 3
        out = tp.mlm_mask({"ids": ids, "index": index}, seed=7, mask_id=mask_id,
                          vocab_size=vocab_size, special_ids=special)
        picked = out["labels"] != tp.IGNORE
        assert not (picked & np.isin(ids, special)).any()
        np.testing.assert_array_equal(out["labels"][picked], ids[picked])
        np.testing.assert_array_equal(out["ids"][~picked], ids[~picked])
        changed = out["ids"][picked]
        total["candidates"] += int((~np.isin(ids, special)).sum())
        total["picked"] += int(picked.sum())
        total["mask"] += int((changed == mask_id).sum())
        total["kept"] += int((changed == ids[picked]).sum())
        total["random"] += int(((changed != mask_id) & (changed != ids[picked])).sum())
        assert not np.isin(changed[changed != ids[picked]], [0, 1, 2, 3]).any()

    def within(count, n, p):  # 5 standard deviations of a binomial
        assert abs(count - n * p) < 5 * np.sqrt(n * p * (1 - p)), (count, n, p)

    within(total["picked"], total["candidates"], 0.15)
    within(total["mask"], total["picked"], 0.8)
    # a random draw equals the original with probability 1/995: "kept" gains about that much
    within(total["kept"], total["picked"], 0.1 + 0.1 / 995)
    within(total["random"], total["picked"], 0.1 - 0.1 / 995)


def test_mlm_split_sets_the_mask_random_keep_fractions():
    """split=(0.8, 0.0): picked tokens become [MASK] or stay, never a random id, and the same
    tokens are picked as with the default split (the split only changes what they become)."""
    ids = np.random.default_rng(1).integers(5, 1000, size=20000)
    kwargs = dict(seed=3, mask_id=4, vocab_size=1000, special_ids=[0, 1, 2, 3, 4])
    out = tp.mlm_mask({"ids": ids, "index": 0}, split=(0.8, 0.0), **kwargs)
    picked = out["labels"] != tp.IGNORE
    changed = out["ids"][picked]
    n = int(picked.sum())
    assert (changed == 4).sum() + (changed == ids[picked]).sum() == n  # no random ids
    assert abs((changed == 4).mean() - 0.8) < 5 * np.sqrt(0.16 / n)
    default = tp.mlm_mask({"ids": ids, "index": 0}, **kwargs)
    explicit = tp.mlm_mask({"ids": ids, "index": 0}, split=(0.8, 0.1), **kwargs)
    np.testing.assert_array_equal(default["ids"], explicit["ids"])
    np.testing.assert_array_equal(default["labels"], out["labels"])  # same tokens picked
    assert ((default["ids"] != ids) & (default["ids"] != 4)).any()  # the default does randomise


def test_mlm_mask_is_a_function_of_seed_epoch_index():
    ids = np.arange(5, 205)
    kwargs = dict(seed=1, mask_id=4, vocab_size=300, special_ids=[0, 1, 2, 3, 4])
    a = tp.mlm_mask({"ids": ids, "index": 3, "epoch": 0}, **kwargs)
    b = tp.mlm_mask({"ids": ids, "index": 3, "epoch": 0}, **kwargs)
    c = tp.mlm_mask({"ids": ids, "index": 4, "epoch": 0}, **kwargs)
    d = tp.mlm_mask({"ids": ids, "index": 3, "epoch": 1}, **kwargs)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not np.array_equal(a["labels"], c["labels"])
    assert not np.array_equal(a["labels"], d["labels"])


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wp")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return load_tokenizer(folder)


def test_first_subtoken_alignment_equals_sentence_encoding(wordpiece):
    names = ["O", "B-ORG", "I-ORG", "B-MISC", "B-PER", "I-PER"]
    example = {"words": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb",
                         "."],
               "tags": ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]}
    out = tp.align_labels(wordpiece, label_names=names, max_length=32)(example)
    np.testing.assert_array_equal(out["ids"], wordpiece.encode(" ".join(example["words"])))
    pieces = [VOCAB[i] for i in out["ids"]]
    assert pieces == ["[CLS]", "eu", "reject", "##s", "german", "call", "to", "boy", "##cott",
                      "brit", "##ish", "lamb", ".", "[SEP]"]
    I = tp.IGNORE
    assert out["labels"].tolist() == [I, 1, 0, I, 3, 0, 0, 0, I, 3, I, 0, 0, I]
    short = tp.align_labels(wordpiece, label_names=names, max_length=5)(example)
    assert [VOCAB[i] for i in short["ids"]] == ["[CLS]", "eu", "reject", "##s", "[SEP]"]
    assert short["labels"].tolist() == [I, 1, 0, I, I]
    with pytest.raises(ValueError, match="not in label_names"):
        tp.align_labels(wordpiece, label_names=["O"], max_length=8)(example)


def test_gather_targets_keeps_every_labelled_position_once():
    rng = np.random.default_rng(0)
    labels_BT = np.where(rng.random((6, 40)) < 0.15, rng.integers(5, 50, (6, 40)), tp.IGNORE)
    labels_BT[5, :] = 7  # a row labelled everywhere: M must grow to T, nothing dropped
    for batch_labels, expect_M in ((labels_BT[:5], 16), (labels_BT, 40)):
        out = tp.gather_targets({"labels": batch_labels, "ids": np.zeros_like(batch_labels)})
        assert out["targets"].shape == (len(batch_labels), expect_M)
        for row in range(len(batch_labels)):
            kept = out["labels"][row] != tp.IGNORE
            np.testing.assert_array_equal(out["targets"][row][kept],
                                          np.flatnonzero(batch_labels[row] != tp.IGNORE))
            np.testing.assert_array_equal(out["labels"][row][kept],
                                          batch_labels[row][batch_labels[row] != tp.IGNORE])


def test_mlm_loss_on_gathered_positions_equals_full_loss():
    import jax

    from lmx.models import transformer
    from lmx.train import step as train
    model = transformer.Transformer(transformer.size("bert-tiny"), task="mlm")
    rng = np.random.default_rng(1)
    ids_BT = rng.integers(5, 100, (4, 24)).astype(np.int32)
    mask_BT = np.ones_like(ids_BT)
    mask_BT[1, 15:] = 0
    labels_BT = np.where((rng.random(ids_BT.shape) < 0.2) & (mask_BT > 0), ids_BT, tp.IGNORE)
    batch = {"ids": ids_BT, "mask": mask_BT, "token_types": np.zeros_like(ids_BT),
             "labels": labels_BT, "weights": np.array([1, 1, 1, 0], np.float32)}
    variables = model.init(jax.random.key(0), ids_BT, mask_BT)
    full_logits, _ = train.forward(model, variables, batch, train=False)
    gathered = tp.gather_targets(batch)
    part_logits, _ = train.forward(model, variables, gathered, train=False)
    assert part_logits.shape[1] < full_logits.shape[1]
    full_loss, full_aux = train.classification_loss(full_logits, batch)
    part_loss, part_aux = train.classification_loss(part_logits, gathered)
    assert float(full_aux["count"]) == float(part_aux["count"]) > 0
    np.testing.assert_allclose(float(part_loss), float(full_loss), rtol=1e-5)
    np.testing.assert_allclose(float(part_aux["correct"]), float(full_aux["correct"]))
