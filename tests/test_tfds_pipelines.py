"""Each task's pipeline reads tfds catalog datasets ("tfds:NAME" files) end to end through the
trainer, under `tfds.testing.mock_data` (no network, no TensorFlow): text classification
(glue/sst2), NER (conll2003), causal LM (tiny_shakespeare), masked LM (lm1b), images (cifar10)."""
import numpy as np
import pytest
from test_tasks import PEOPLE, PLACES, WORDS, _base, _tiny_bert_folder

from lmx import config as config_lib
from lmx.train import loop

tfds = pytest.importorskip("tensorflow_datasets")


# Steps and margins, measured on these planted data (2-core AMD EPYC); each margin is about
# half the effect: sst2 accuracy 1.0 vs majority 0.703; conll2003 entity F1 1.0 (an
# untrained tagger 0.0); tiny_shakespeare 1.60 nats/char vs uniform 2.77; lm1b perplexity
# 24.7 vs uniform over its 300 pieces; cifar10 accuracy 1.0 vs chance 0.25.
SST2_STEPS, SST2_MARGIN = 40, 0.15
CONLL_STEPS, CONLL_MIN_F1 = 40, 0.5
LM_STEPS, LM_MARGIN = 40, 0.6
MLM_STEPS, MLM_MAX_PERPLEXITY = 60, 150
IMAGE_STEPS, IMAGE_MARGIN = 20, 0.35


def _source_fn(make):
    """An `as_data_source_fn` giving consistent examples per split (tfds' random mock draws
    CoNLL's token and tag lengths independently, and random text too short for an LM)."""
    return lambda self, split, **kwargs: make(split)


def _lines(split, n, seed):
    rng = np.random.default_rng([seed, len(split)])
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(n)]


def test_glue_sst2_trains_and_scores_from_tfds(tmp_path):
    """Planted label: 1 when the sentence names a person. The trained classifier beats the
    majority class of the validation split by a margin."""
    rows = {split: [(line, int(any(w in PEOPLE for w in line.split())))
                    for line in _lines(split, 64, 3)] for split in ("train", "validation")}
    make = lambda split: [{"sentence": t.encode(), "label": lab, "idx": i}  # noqa: E731
                          for i, (t, lab) in enumerate(rows[split])]
    c = _base(tmp_path, kind="csv_classification", train_file="tfds:glue/sst2",
              validation_split="validation", max_length=16)
    c.model.pretrained = _tiny_bert_folder(tmp_path / "bert")
    c.peft.method, c.train.num_steps, c.train.learning_rate = "full", SST2_STEPS, 1e-2
    with tfds.testing.mock_data(num_examples=64, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    assert results["data"]["validation_examples"] == 64  # the validation split, not a carve
    labels = [lab for _, lab in rows["validation"]]
    majority = max(np.mean(labels), 1 - np.mean(labels))
    accuracy = results["validation"]["accuracy"]
    print(f"sst2 from tfds: accuracy {accuracy:.3f}, majority class {majority:.3f}")
    assert accuracy > majority + SST2_MARGIN, (accuracy, majority)


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
    c.model.task, c.peft.method = "token_classification", "full"
    c.train.num_steps, c.train.learning_rate = CONLL_STEPS, 1e-2
    with tfds.testing.mock_data(num_examples=32, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    assert results["data"]["validation_examples"] == 32
    f1 = results["validation"]["f1"]
    print(f"conll2003 from tfds: entity f1 {f1:.3f}")
    assert f1 > CONLL_MIN_F1, results["validation"]  # an untrained tagger scores about 0


def test_tiny_shakespeare_causal_lm_from_tfds(tmp_path):
    text = {"train": "to be or not to be, that is the question.\n" * 40,
            "validation": "that is not the question, to be.\n" * 10}
    c = _base(tmp_path, kind="text", tokenizer="char", train_file="tfds:tiny_shakespeare",
              validation_split="validation", max_length=16, sample_tokens=8)
    c.model.size, c.model.task, c.peft.method = "gpt2-tiny", "causal_lm", "full"
    c.train.num_steps, c.train.learning_rate = LM_STEPS, 1e-2
    make = lambda split: [{"text": text[split].encode()}]  # noqa: E731  one record per split
    with tfds.testing.mock_data(num_examples=1, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    uniform = np.log(len(set(text["train"])))  # a model that learned nothing does no better
    nats = results["validation"]["nats_per_char"]
    print(f"tiny_shakespeare from tfds: {nats:.3f} nats/char, uniform {uniform:.3f}")
    assert nats < uniform - LM_MARGIN, (nats, uniform)
    assert set(results["sample"]) <= set(text["train"])


def test_lm1b_masked_lm_from_tfds(tmp_path):
    make = lambda split: [{"text": line.encode()} for line in _lines(split, 400, 1)]  # noqa
    c = _base(tmp_path, kind="text", train_file="tfds:lm1b", validation_split="test",
              tokenizer_vocab_size=300, max_length=16)
    c.model.size, c.model.task, c.peft.method = "bert-tiny", "mlm", "full"
    c.train.num_steps, c.train.learning_rate = MLM_STEPS, 5e-3
    with tfds.testing.mock_data(num_examples=400, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    perplexity = results["validation"]["perplexity"]
    print(f"lm1b from tfds: perplexity {perplexity:.1f} (uniform over the vocabulary: 300)")
    # random words: the model can learn their frequencies (20 words), not their context
    assert perplexity < MLM_MAX_PERPLEXITY, results["validation"]
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.model").exists()


def test_cifar10_resnet_from_tfds_resized(tmp_path):
    c = config_lib.base_config()
    c.model.family, c.model.size, c.model.image_size = "resnet", "resnet-tiny", 16
    c.data.kind, c.data.train_file, c.data.validation_split = "images", "tfds:cifar10", "test"
    c.peft.method, c.train.batch_size, c.train.num_steps = "full", 8, IMAGE_STEPS
    c.train.learning_rate = 3e-2

    def make(split):  # planted: the class is the image's brightness (plus noise)
        rng = np.random.default_rng(len(split))
        labels = rng.integers(0, 4, 32)
        return [{"image": np.clip(40 + 50 * lab + rng.normal(0, 10, (32, 32, 3)), 0, 255
                                  ).astype(np.uint8), "label": int(lab)} for lab in labels]

    with tfds.testing.mock_data(num_examples=32, as_data_source_fn=_source_fn(make)):
        results = loop.run(c, str(tmp_path / "run"))
    assert results["data"]["validation_examples"] == 32
    accuracy = results["validation"]["accuracy"]
    print(f"cifar10 from tfds: accuracy {accuracy:.3f} (4 planted classes: chance 0.25)")
    assert accuracy > 0.25 + IMAGE_MARGIN, results["validation"]


def _planted_images(split):
    """40 images per split whose pixels say their class: brightness 25 * label (+- 3 noise),
    each of the 10 classes four times in a shuffled order."""
    rng = np.random.default_rng(len(split))
    labels = rng.permutation(np.arange(40) % 10)
    return [(np.clip(25 * lab + rng.integers(-3, 4, (32, 32, 3)), 0, 255).astype(np.uint8),
             int(lab)) for lab in labels]


def _prepare_cifar10(data_dir):
    """A real tfds cifar10 folder (array_record, PNG-encoded images) holding the planted
    images, prepared without TensorFlow: the builder's own features and writer."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415
    from tensorflow_datasets.image_classification import cifar  # noqa: PLC0415

    def png(image):
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        out.seek(0)
        return out

    class Planted(cifar.Cifar10, skip_registration=True):
        name = "cifar10"  # written where tfds.builder("cifar10", data_dir=...) reads
        url_infos = None  # no checksums to look up (tfds would need importlib_resources)

        def _split_generators(self, dl_manager):
            return {split: ((i, {"id": f"{split}{i}", "image": png(image), "label": label})
                            for i, (image, label) in enumerate(_planted_images(split)))
                    for split in ("train", "test")}

    Planted(data_dir=str(data_dir), file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


@pytest.mark.parametrize("path", ["mock", "folder"])
def test_image_labels_are_the_classes_the_pixels_were_planted_with(tmp_path, path):
    """The image pipeline (tfds records -> [-1, 1] pixels resized to model.image_size -> label
    ids) keeps each image with its own label, read through tfds' data source (mock) and from a
    prepared local tfds folder (data.tfds_dir): every label equals the class its pixels encode
    and all ten classes are there (a pipeline labelling every image 0, or shuffling labels
    against images, fails)."""
    from lmx import tasks  # noqa: PLC0415
    c = config_lib.base_config()
    c.model.family, c.model.size, c.model.image_size = "resnet", "resnet-tiny", 16
    c.data.kind, c.data.train_file, c.data.validation_split = "images", "tfds:cifar10", "test"
    if path == "folder":
        _prepare_cifar10(tmp_path / "tfds")
        c.data.tfds_dir = str(tmp_path / "tfds")
        data = tasks.get(c).load(c, str(tmp_path / "run"))
    else:
        make = lambda split: [{"image": image, "label": label}  # noqa: E731
                              for image, label in _planted_images(split)]
        with tfds.testing.mock_data(num_examples=40, as_data_source_fn=_source_fn(make)):
            data = tasks.get(c).load(c, str(tmp_path / "run"))
    assert data.label_names == [str(i) for i in range(10)]
    for split, examples in (("train", data.train), ("test", data.validation)):
        assert examples.images.shape == (40, 16, 16, 3)
        pixels_say = np.rint((examples.images.mean(axis=(1, 2, 3)) + 1) * 127.5 / 25)
        np.testing.assert_array_equal(examples.labels, pixels_say, err_msg=split)
        assert sorted(examples.labels) == sorted(lab for _, lab in _planted_images(split))


def test_images_kind_needs_a_tfds_name(tmp_path):
    c = config_lib.base_config()
    c.model.family, c.data.kind, c.data.train_file = "resnet", "images", __file__
    with pytest.raises(ValueError, match="should be 'tfds:NAME'"):
        config_lib.validate(c, 1)


def _iob1(tags):
    """BIO -> IOB1 (CoNLL-2003 as distributed): B- only right after an entity of its type."""
    out, previous = [], "O"
    for tag in tags:
        kind = tag[2:]
        out.append(tag if tag == "O" or (tag[0] == "B" and previous[2:] == kind) else "I-" + kind)
        previous = tag
    return out


def _same_examples(a, b):
    if isinstance(a, list):  # token classification: aligned example dicts
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert set(x) == set(y)
            for key in set(x) - {"document"}:  # tfds' conll2003 has no document boundaries
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        return
    np.testing.assert_array_equal(a.labels, b.labels)
    for x, y in zip(a.ids, b.ids):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["glue/sst2", "conll2003"])
def test_tfds_and_local_files_give_the_same_labels_on_the_same_rows(tmp_path, name):
    """The tfds mapping and lmx's local readers agree row for row: label names, label ids,
    token ids (tfds' conll2003 is BIO; the distributed files are IOB1, converted on read)."""
    from lmx import tasks
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    rows = {split: [(line, str(i % 2)) for i, line in enumerate(_lines(split, 24, 2))]
            for split in ("train", "validation")}
    tags = {split: [["B-PER" if w in PEOPLE else "B-LOC" if w in PLACES else "O"
                     for w in line.split()] for line, _ in rows[split]] for split in rows}
    folder = _tiny_bert_folder(tmp_path / "bert")
    if name == "glue/sst2":
        make = lambda split: [{"sentence": t.encode(), "label": int(lab), "idx": i}  # noqa
                              for i, (t, lab) in enumerate(rows[split])]
        for split in rows:
            (tmp_path / f"{split}.csv").write_text("text,category\n" + "".join(
                f"{t},{lab}\n" for t, lab in rows[split]))
        kind, suffix = "csv_classification", "csv"
    else:
        make = lambda split: [{"tokens": np.asarray([w.encode() for w in t.split()], object),  # noqa
                               "ner": np.asarray([names.index(g) for g in tg]),
                               "pos": np.zeros(len(tg), np.int64),
                               "chunks": np.zeros(len(tg), np.int64)}
                              for (t, _), tg in zip(rows[split], tags[split])]
        for split in rows:
            (tmp_path / f"{split}.txt").write_text("".join(
                "".join(f"{w} NN O {g}\n" for w, g in zip(t.split(), _iob1(tg))) + "\n"
                for (t, _), tg in zip(rows[split], tags[split])))
        kind, suffix = "conll", "txt"

    def load(**files):
        c = _base(tmp_path, kind=kind, max_length=16, **files)
        c.model.pretrained = folder
        if kind == "conll":
            c.model.task = "token_classification"
        return tasks.get(c).load(c, str(tmp_path / "run"))

    with tfds.testing.mock_data(num_examples=24, as_data_source_fn=_source_fn(make)):
        from_tfds = load(train_file=f"tfds:{name}", validation_split="validation")
    local = load(train_file=str(tmp_path / f"train.{suffix}"),
                 validation_file=str(tmp_path / f"validation.{suffix}"))
    assert from_tfds.label_names == local.label_names
    assert len(from_tfds.label_names) == (2 if kind == "csv_classification" else 3)
    _same_examples(from_tfds.train, local.train)
    _same_examples(from_tfds.validation, local.validation)
