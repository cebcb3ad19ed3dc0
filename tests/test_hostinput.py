"""Per-host input through the launcher (data.host_input): two processes on loopback, each
tokenizing only its half of the training CSV into a shared token cache and batching only its
rows, train like one process that tokenizes everything in memory: the same loss at every
step and the same final weights, straight and preempted + resumed; later runs read the cache
without tokenizing."""
import json

import jax
import numpy as np
import pytest
from test_checkpoint import _finish, jax_cache, launch, read_trainable  # noqa: F401
from test_multihost import _free_port, _train_losses, _wait
from test_tasks import WORDS, _tiny_bert_folder

from lmx import config as config_lib
from lmx.data import hostdata

FOUR = "--xla_force_host_platform_device_count=4"
NUM_TRAIN = 90  # 45 records a process


def _csv(path, n, seed):
    """`text,category` rows: the label is whether "paris" is in the text."""
    rng = np.random.default_rng(seed)
    rows = ["text,category"]
    for _ in range(n):
        words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(1, 6)))]
        rows.append(f"{' '.join(words)},{'yes' if 'paris' in words else 'no'}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostinput_data")
    (root / "labels.json").write_text(json.dumps(["no", "yes"]))
    return {"data.kind": "csv_classification",
            "data.train_file": _csv(root / "train.csv", NUM_TRAIN, 0),
            "data.validation_file": _csv(root / "valid.csv", 16, 1),
            "data.labels_file": str(root / "labels.json"),
            "data.text_column": "text", "model.pretrained": _tiny_bert_folder(root / "bert")}


def _flags(data, **more):
    return [f"--config.{k}={v}" for k, v in {**data, **more}.items()]


def _both(workdir, cache, data, **env):
    port = _free_port()
    return _wait([launch(workdir, cache, f"--coordinator_address=127.0.0.1:{port}",
                         "--num_processes=2", f"--process_id={i}", *_flags(data, **{
                             "data.host_input": True}), XLA_FLAGS=FOUR, **env)
                  for i in range(2)])


def _assert_same_training(run, reference):
    losses, want = _train_losses(run), _train_losses(reference)
    assert sorted(losses) == list(range(1, 7)) == sorted(want)
    for step in want:  # 2 x 4 devices sum gradients in another order than 1 x 8: not bitwise
        assert abs(losses[step] - want[step]) <= 1e-6, (step, losses[step], want[step])
    a, b = read_trainable(run / "trainable"), read_trainable(reference / "trainable")
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(a["peft"]))  # LoRA B moved


def test_two_processes_with_host_input_train_and_resume_like_one_process(
        tmp_path, jax_cache, text_data):
    reference = tmp_path / "one_process"  # host_input off: every record tokenized in memory
    code, _, err = _finish(launch(reference, jax_cache, *_flags(text_data)))
    assert code == 0, err[-3000:]
    data = {**text_data, "data.token_cache": tmp_path / "cache"}

    straight = _both(tmp_path / "straight", jax_cache, data)
    for p, (_, _, err) in enumerate(straight):  # each tokenized its half, once
        assert f"share {p} of 2 tokenized ({NUM_TRAIN // 2} records)" in err, err[-3000:]
    _assert_same_training(tmp_path / "straight", reference)

    resumed = tmp_path / "resumed"  # a preemption notice after step 3, then a restart
    (_, out0, err0), (_, _, err1) = _both(resumed, jax_cache, data, fault="step:3:TERM",
                                          LMX_FAULT_PAUSE="0.5")
    step = json.loads(out0[out0.index("{\n"):])["step"]
    assert json.loads(out0[out0.index("{\n"):])["preempted"] and step in (3, 4, 5)
    outputs = [(err0, err1), tuple(err for _, _, err in _both(resumed, jax_cache, data))]
    for p in (0, 1):  # neither launch tokenized again: the cache is read
        for errs in outputs:
            assert f"share {p} of 2 read, nothing tokenized" in errs[p], errs[p][-3000:]
        assert f"resumed from {resumed / 'checkpoints'} at step {step}" in outputs[1][p]
    _assert_same_training(resumed, reference)
    a, b = read_trainable(resumed / "trainable"), read_trainable(tmp_path / "straight" /
                                                                 "trainable")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):  # same topology: bit for bit
        np.testing.assert_array_equal(x, y)
    assert _train_losses(resumed) == _train_losses(tmp_path / "straight")


def test_host_input_config_is_refused_where_it_cannot_work():
    c = config_lib.base_config()
    c.model.pretrained, c.data.train_file, c.data.host_input = "m", "t.csv", True
    with pytest.raises(ValueError) as error:
        config_lib.validate(c, 1)
    assert "needs data.labels_file" in str(error.value)
    assert "needs data.validation_file or data.validation_split" in str(error.value)
    c.data.kind, c.model.task = "text", "causal_lm"
    with pytest.raises(ValueError, match="host_input=True is for text sequence classific"):
        config_lib.validate(c, 1)
    c = config_lib.base_config()
    c.data.kind, c.data.token_cache = "synthetic", "/tmp/cache"
    with pytest.raises(ValueError, match="token_cache='/tmp/cache' is read only with"):
        config_lib.validate(c, 1)


def test_streamed_share_reads_only_its_records_in_chunks(tmp_path):
    """A share is written chunk by chunk (here 3 records a chunk) from a random-access
    source, reading only its indices; the cache gives back each record's arrays."""
    asked = []

    class Source:  # a random-access corpus that records which indices were read
        def __len__(self):
            return 20

        def __getitem__(self, i):
            asked.append(i)
            return i

    def encode(i):
        return {"ids": np.arange(i % 5 + 1, dtype=np.int32) + i, "labels": np.int32(i % 3)}

    limited = hostdata.First(Source(), 17)
    for p in (0, 1):
        hostdata.write_share(limited, encode, tmp_path, p, 2, "k", chunk_size=3)
    assert asked == list(range(0, 17, 2)) + list(range(1, 17, 2))
    cached = hostdata.CachedExamples(tmp_path)
    assert len(cached) == 17
    for i in range(17):
        want = encode(i)
        np.testing.assert_array_equal(cached[i]["ids"], want["ids"])
        assert cached[i]["labels"] == want["labels"]
    np.testing.assert_array_equal(cached.lengths, [i % 5 + 1 for i in range(17)])
