"""Packed training rows for classification (data.pack_length): whole examples first-fit into
rows, segment-masked attention, per-segment pooling; a packed step equals the examples alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmx.data import batching
from lmx.data.transforms import IGNORE
from lmx.models import transformer
from lmx.train import step


def _examples(lengths, seed=0, per_token=False):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = rng.integers(4, 128, size=n).astype(np.int32)
        labels = (rng.integers(0, 3, size=n).astype(np.int32) if per_token else np.int32(i % 3))
        out.append({"ids": ids, "token_types": np.zeros(n, np.int32), "labels": labels})
    return out


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_packed_logits_and_loss_equal_each_example_alone(pooling):
    """Three examples in one packed row: the logits at each segment's first token equal that
    example's logits alone (pooling per segment, BERT's pooler included), and the packed
    batch's loss equals the mean loss of the examples alone."""
    model = transformer.Transformer(transformer.size("bert-tiny", use_pooler=True),
                                    task="sequence_classification", num_labels=3,
                                    pooling=pooling)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    examples = _examples((5, 9, 3))
    packed = batching.pack_rows(examples, [[0, 1, 2]], seq_len=20, pad_id=0)
    logits_BTC, _ = step.forward(model, variables, packed, train=False)
    starts = np.flatnonzero(packed["labels"][0] != IGNORE)
    np.testing.assert_array_equal(starts, [0, 5, 14])
    losses = []
    for example, t in zip(examples, starts):
        alone = batching.pad_batch([example], 1, pad_id=0, pad_multiple=1)
        logits_1C, _ = step.forward(model, variables, alone, train=False)
        np.testing.assert_allclose(logits_BTC[0, t], logits_1C[0], atol=1e-5, rtol=1e-5)
        losses.append(step.classification_loss(logits_1C, alone)[0])
    packed_loss, aux = step.classification_loss(logits_BTC, packed)
    assert aux["count"] == 3
    np.testing.assert_allclose(packed_loss, np.mean(losses), rtol=1e-5)


def test_first_fit_keeps_every_example_whole_and_once():
    lengths = np.random.default_rng(0).integers(3, 40, 500)
    rows = batching.first_fit_rows(lengths, 64)
    flat = np.concatenate(rows)
    np.testing.assert_array_equal(np.sort(flat), np.arange(500))
    assert all(lengths[r].sum() <= 64 for r in rows)
    assert len(rows) <= np.ceil(lengths.sum() / 64) * 1.03  # nearly no padding (FFD)
    with pytest.raises(ValueError, match="pack_length=16"):
        batching.first_fit_rows(np.array([10, 17]), 16)


def test_packed_stream_labels_each_segment_and_resumes_exactly():
    """Packed classification batches: every example of an epoch once (labels at its
    segment's first token, its ids intact), the same number of rows every epoch, a step
    holding about batch_size examples, and a stream resumed at step k yields batch k."""
    examples = _examples(np.random.default_rng(1).integers(3, 17, 300))
    kw = dict(seed=3, pad_id=0, pack_length=32, whole_examples=True)
    per_epoch = batching.steps_per_epoch(examples, 16, pack_length=32, whole_examples=True)
    stream = batching.train_batches(examples, 16, start_step=0, **kw)
    batches = [next(stream) for _ in range(2 * per_epoch)]
    rows = batching.packed_rows_per_step(batching.lengths_of(examples), 16, 32)
    assert all(b["ids"].shape == (rows, 32) for b in batches)
    seen = {}
    for b in batches[:per_epoch]:
        for r in range(rows):
            for s in range(1, b["segment_ids"][r].max() + 1):
                where = np.flatnonzero(b["segment_ids"][r] == s)
                ids = b["ids"][r, where]
                match = [i for i, e in enumerate(examples) if np.array_equal(e["ids"], ids)]
                assert len(match) == 1 and match[0] not in seen
                seen[match[0]] = True
                assert b["labels"][r, where[0]] == examples[match[0]]["labels"]
                assert (b["labels"][r, where[1:]] == IGNORE).all()
                np.testing.assert_array_equal(b["positions"][r, where], np.arange(len(where)))
    assert len(seen) >= 0.9 * len(examples)  # only the epoch's last rows % rows are dropped
    assert 12 <= len(seen) / per_epoch <= 20
    assert not np.array_equal(batches[0]["ids"], batches[per_epoch]["ids"])  # reshuffled
    resumed = batching.train_batches(examples, 16, start_step=per_epoch + 2, **kw)
    for k in (per_epoch + 2, per_epoch + 3):
        got = next(resumed)
        for key in got:
            np.testing.assert_array_equal(got[key], batches[k][key], err_msg=key)


def test_packed_token_labels_are_kept_per_token():
    examples = _examples((4, 6), per_token=True)
    packed = batching.pack_rows(examples, [[1, 0]], seq_len=12, pad_id=0)
    np.testing.assert_array_equal(packed["labels"][0, :10],
                                  np.concatenate([examples[1]["labels"], examples[0]["labels"]]))
    assert (packed["labels"][0, 10:] == IGNORE).all()
