"""Each task's pipeline reads tfds catalog datasets ("tfds:NAME" files) end to end through the
trainer, under `tfds.testing.mock_data` (no network, no TensorFlow): text classification
(glue/sst2), NER (conll2003), causal LM (tiny_shakespeare), masked LM (lm1b), images (cifar10)."""
import numpy as np
import pytest
from test_tasks import PEOPLE, PLACES, WORDS, _base, _tiny_bert_folder

from lmx import config as config_lib
from lmx.train import loop

tfds = pytest.importorskip("tensorflow_datasets")


def _source_fn(make):
    """An `as_data_source_fn` giving consistent examples per split (tfds' random mock draws
    CoNLL's token and tag lengths independently, and random text too short for an LM)."""
    return lambda self, split, **kwargs: make(split)


def _lines(split, n, seed):
    rng = np.random.default_rng([seed, len(split)])
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(n)]


def test_glue_sst2_trains_and_scores_from_tfds(tmp_path):
    c = _base(tmp_path, kind="csv_classification", train_file="tfds:glue/sst2",
              validation_split="validation", max_length=16)
    c.model.pretrained = _tiny_bert_folder(tmp_path / "bert")
    c.train.num_steps = 3
    with tfds.testing.mock_data(num_examples=24):
        results = loop.run(c, str(tmp_path / "run"))
    assert 0.0 <= results["validation"]["accuracy"] <= 1.0
    assert results["data"]["validation_examples"] == 24  # the validation split, not a carve


def test_conll2003_trains_entity_f1_from_tfds(tmp_path):
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

    def make(split):
        out = []
        for line in _lines(split, 32, 0):
            words = line.split()
            tags = [names.index("B-PER") if w in PEOPLE else names.index("B-LOC")
                    if w in PLACES else 0 for w in words]
            out.append({"tokens": np.asarray([w.encode() for w in words], object),
                        "ner": np.asarray(tags), "pos": np.zeros(len(words), np.int64),
                        "chunks": np.zeros(len(words), np.int64)})
        return out

    c = _base(tmp_path, kind="conll", train_file="tfds:conll2003",
              validation_split="validation", max_length=16)
    c.model.pretrained = _tiny_bert_folder(tmp_path / "bert")
    c.model.task, c.train.num_steps = "token_classification", 3
    with tfds.testing.mock_data(num_examples=32, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    assert {"f1", "precision", "recall"} <= set(results["validation"])
    assert results["data"]["validation_examples"] == 32


def test_tiny_shakespeare_causal_lm_from_tfds(tmp_path):
    text = {"train": "to be or not to be, that is the question.\n" * 40,
            "validation": "that is not the question, to be.\n" * 10}
    c = _base(tmp_path, kind="text", tokenizer="char", train_file="tfds:tiny_shakespeare",
              validation_split="validation", max_length=16, sample_tokens=8)
    c.model.size, c.model.task, c.peft.method = "gpt2-tiny", "causal_lm", "full"
    c.train.num_steps = 3
    make = lambda split: [{"text": text[split].encode()}]  # noqa: E731  one record per split
    with tfds.testing.mock_data(num_examples=1, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    assert results["validation"]["nats_per_char"] > 0
    assert set(results["sample"]) <= set(text["train"])


def test_lm1b_masked_lm_from_tfds(tmp_path):
    make = lambda split: [{"text": line.encode()} for line in _lines(split, 400, 1)]  # noqa
    c = _base(tmp_path, kind="text", train_file="tfds:lm1b", validation_split="test",
              tokenizer_vocab_size=300, max_length=16)
    c.model.size, c.model.task, c.peft.method = "bert-tiny", "mlm", "full"
    c.train.num_steps = 3
    with tfds.testing.mock_data(num_examples=400, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    assert results["validation"]["perplexity"] > 1
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.model").exists()


def test_cifar10_resnet_from_tfds_resized(tmp_path):
    c = config_lib.base_config()
    c.model.family, c.model.size, c.model.image_size = "resnet", "resnet-tiny", 16
    c.data.kind, c.data.train_file, c.data.validation_split = "images", "tfds:cifar10", "test"
    c.peft.method, c.train.batch_size, c.train.num_steps = "full", 8, 3
    with tfds.testing.mock_data(num_examples=16):
        results = loop.run(c, str(tmp_path / "run"))
    assert 0.0 <= results["validation"]["accuracy"] <= 1.0
    assert results["data"]["validation_examples"] == 16


def test_images_kind_needs_a_tfds_name(tmp_path):
    c = config_lib.base_config()
    c.model.family, c.data.kind, c.data.train_file = "resnet", "images", __file__
    with pytest.raises(ValueError, match="should be 'tfds:NAME'"):
        config_lib.validate(c, 1)
