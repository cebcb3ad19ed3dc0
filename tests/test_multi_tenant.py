"""The multi-tenant experiment's pieces: `batching.mixed_batch` keeps every tenant's rows (and
only its rows) under its adapter id, and `bench.multi_tenant.run_mixed` trains each tenant as
the launcher trains it alone (dropout off: the same init, data order and optimizer)."""
import numpy as np
import pytest

from bench import multi_tenant
from experiments import tiny_synthetic
from lmx.data import batching
from lmx.data.transforms import IGNORE

STEPS = 4
PAD = 7  # not 0, so a row widened with zeros instead of the pad id is caught


def _batch(lengths, first_id, per_token=False):
    rows = [{"ids": np.arange(first_id, first_id + n, dtype=np.int32),
             "token_types": np.ones(n, np.int32),
             "labels": (np.full(n, first_id, np.int32) if per_token else np.int32(first_id + n))}
            for n in lengths]
    return batching.pad_batch(rows, len(rows) + 1, pad_id=PAD, pad_multiple=8)  # + a filler row


def test_mixed_batch_keeps_each_tasks_rows_under_its_adapter():
    short, long = _batch([3, 5], 100), _batch([12, 2, 9], 200)  # T 8 and 16
    out = batching.mixed_batch([short, long], pad_id=PAD)
    np.testing.assert_array_equal(out["adapter_ids"], [0, 0, 0, 1, 1, 1, 1])
    assert out["ids"].shape == (7, 16)
    np.testing.assert_array_equal(out["ids"][:3, :8], short["ids"])
    np.testing.assert_array_equal(out["ids"][:3, 8:], PAD)
    np.testing.assert_array_equal(out["ids"][3:], long["ids"])
    np.testing.assert_array_equal(out["mask"].sum(1), [3, 5, 0, 12, 2, 9, 0])
    np.testing.assert_array_equal(out["token_types"].sum(1), [3, 5, 0, 12, 2, 9, 0])
    np.testing.assert_array_equal(out["labels"], [103, 105, 0, 212, 202, 209, 0])
    np.testing.assert_array_equal(out["weights"], [1, 1, 0, 1, 1, 1, 0])
    tokens = batching.mixed_batch([_batch([3], 100, True), _batch([10], 200, True)], pad_id=PAD)
    np.testing.assert_array_equal(tokens["labels"][0], [100] * 3 + [IGNORE] * 13)
    with pytest.raises(ValueError, match="batch 1 has fields"):
        batching.mixed_batch([short, {**long, "segment_ids": long["ids"]}], pad_id=PAD)


def _tenant(rank: int, split_seed: int):
    c = tiny_synthetic.get_config("runlocal")
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0  # masks differ in a mixed batch
    c.peft.lora.rank, c.data.split_seed = rank, split_seed
    c.data.pad_multiple = 16  # one padded length: one compile per run
    c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = STEPS
    c.train.grad_clip_norm, c.train.learning_rate = 0.0, 3e-2  # a few steps move the loss
    return c


def test_mixed_run_trains_each_tenant_as_it_trains_alone(tmp_path):
    """Two tenants (LoRA ranks 8 and 4, different train / validation splits) in one mixed run
    end where each ends alone through `loop.run`: validation loss to 1e-5 (relative). Swapped
    streams or adapter ids, a missed step or a wrong init would move it by far more: the two
    tenants' losses differ, and so does a one-step run's."""
    configs = {"a": _tenant(8, 0), "b": _tenant(4, 1)}
    alone = {t: multi_tenant.run_alone(c, str(tmp_path / t)) for t, c in configs.items()}
    together = multi_tenant.run_mixed(configs, str(tmp_path / "mixed"))
    for t, config in configs.items():
        got = together["tenants"][t]
        assert got["rows_trained"] == STEPS * config.train.batch_size
        np.testing.assert_allclose(got["validation"]["loss"], alone[t]["validation"]["loss"],
                                   rtol=1e-5)
    untrained = _tenant(8, 0)
    untrained.train.num_steps = untrained.train.eval_every = untrained.train.checkpoint_every = 1
    one_step = multi_tenant.run_alone(untrained, str(tmp_path / "one"))["validation"]["loss"]
    assert abs(one_step - alone["a"]["validation"]["loss"]) > 1e-4  # > 10x the tolerance
    assert abs(alone["a"]["validation"]["loss"] - alone["b"]["validation"]["loss"]) > 1e-3
