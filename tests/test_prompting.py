"""Prompt learning (model.task "cloze"): lmx.tasks.prompting's cloze scores against
transformers on a tiny random BERT, calibration, templates and verbalizers;
lmx.train.prompt_sweep's few-shot loop; config.prompt validation; and `python -m lmx.main`
end to end on hand-written rows."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from lmx import config as config_lib
from lmx.tasks import prompting
from lmx.train import prompt_sweep

ROOT = pathlib.Path(__file__).resolve().parent.parent

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "it", "was", "great", "terrible", "good",
         "bad", "movie", "the", "a", ".", "fun", "boring", "n", "/", "plot", "!", "so", "film"]
ROWS = [("a great fun movie !", "1"), ("the film was good .", "1"), ("so fun .", "1"),
        ("great plot", "1"), ("a bad boring movie", "0"), ("the film was terrible .", "0"),
        ("so boring .", "0"), ("bad plot !", "0")]
SENTENCES = [text for text, _ in ROWS]


def _tokenizer_files(folder):
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer"}))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random BertForMaskedLM saved with its MLM head, and its encoder saved alone."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37,
                                     max_position_embeddings=64, type_vocab_size=2,
                                     initializer_range=0.1, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # every tensor perturbed (norm gains too), so every tensor matters
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.1 if param.ndim == 1 else 0.02))
    mlm_dir = tmp_path_factory.mktemp("tiny_mlm")
    model.save_pretrained(mlm_dir)
    _tokenizer_files(mlm_dir)
    encoder_dir = tmp_path_factory.mktemp("tiny_encoder")
    model.bert.save_pretrained(encoder_dir)  # no cls.predictions.*: like all-MiniLM-L6-v2
    _tokenizer_files(encoder_dir)
    return model, mlm_dir, encoder_dir


def _inputs(model, sentences, template="{sentence} It was [MASK]."):
    batch = prompting.encode_prompts(model.tokenizer, sentences, template, model.mask_token,
                                     model.mask_id, 64, 16)
    return batch, {k: torch.tensor(batch[k], dtype=torch.long)
                   for k in ("ids", "mask", "token_types")}


def test_mlm_cloze_scores_equal_transformers(tiny_bert):
    reference, mlm_dir, _ = tiny_bert
    model = prompting.load(str(mlm_dir))
    assert model.head == "mlm"
    words = {"0": ["terrible"], "1": ["great"]}
    ids_CW, weights_CW = prompting.verbalizer_ids(model.tokenizer, words, ["0", "1"])
    batch, t = _inputs(model, SENTENCES)
    scores = np.asarray(prompting.class_scores(model.encoder, model.variables, batch, ids_CW,
                                               weights_CW, head=model.head))
    with torch.no_grad():
        logits = reference(input_ids=t["ids"], attention_mask=t["mask"],
                           token_type_ids=t["token_types"]).logits.numpy()
    rows = np.arange(len(SENTENCES))
    expected = logits[rows, batch["mask_position"]][:, ids_CW[:, 0]]
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    # The mask sits where transformers' own tokenizer puts it (same ids, same position).
    hf_tok = transformers.BertTokenizer(str(mlm_dir / "vocab.txt"))
    for b, sentence in enumerate(SENTENCES):
        hf_ids = hf_tok(f"{sentence} It was [MASK].")["input_ids"]
        real = batch["mask"][b] == 1
        assert batch["ids"][b][real].tolist() == hf_ids
        assert hf_ids.index(hf_tok.mask_token_id) == batch["mask_position"][b]


def test_tied_head_is_hidden_state_dot_embeddings(tiny_bert):
    reference, _, encoder_dir = tiny_bert
    model = prompting.load(str(encoder_dir))
    assert model.head == "tied"  # no MLM head in the folder: auto falls back
    with pytest.raises(ValueError, match="no MLM head"):
        prompting.load(str(encoder_dir), head="mlm")
    words = {"0": ["terrible", "bad", "boring"], "1": ["great"]}  # uneven: mean per class
    ids_CW, weights_CW = prompting.verbalizer_ids(model.tokenizer, words, ["0", "1"])
    batch, t = _inputs(model, SENTENCES)
    scores = np.asarray(prompting.class_scores(model.encoder, model.variables, batch, ids_CW,
                                               weights_CW, head=model.head))
    with torch.no_grad():
        hidden = reference.bert(input_ids=t["ids"], attention_mask=t["mask"],
                                token_type_ids=t["token_types"]).last_hidden_state.numpy()
        table = reference.bert.embeddings.word_embeddings.weight.numpy()
    h = hidden[np.arange(len(SENTENCES)), batch["mask_position"]]
    word = lambda w: h @ table[VOCAB.index(w)]
    expected = np.stack([(word("terrible") + word("bad") + word("boring")) / 3, word("great")], 1)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)


def test_forcing_the_tied_head_ignores_a_real_one(tiny_bert):
    _, mlm_dir, encoder_dir = tiny_bert
    forced, plain = prompting.load(str(mlm_dir), head="tied"), prompting.load(str(encoder_dir))
    ids_CW, weights_CW = prompting.verbalizer_ids(forced.tokenizer, {"0": ["bad"], "1": ["good"]},
                                                  ["0", "1"])
    batch, _ = _inputs(forced, SENTENCES)
    score = lambda m: np.asarray(prompting.class_scores(m.encoder, m.variables, batch, ids_CW,
                                                        weights_CW, head=m.head))
    assert forced.head == "tied"
    np.testing.assert_allclose(score(forced), score(plain), atol=1e-6)


def test_calibration_divides_out_the_content_free_prior():
    probs = np.array([[0.6, 0.4], [0.9, 0.1]])
    content_free = np.array([[0.7, 0.3], [0.9, 0.1]])  # mean prior [0.8, 0.2]
    calibrated = prompting.calibrate(probs, content_free)
    np.testing.assert_allclose(calibrated[0], [0.75, 2.0] / np.float64(2.75))
    np.testing.assert_allclose(calibrated[1], [1.125, 0.5] / np.float64(1.625))
    np.testing.assert_allclose(calibrated.sum(-1), 1.0)
    assert calibrated[0].argmax() == 1 and probs[0].argmax() == 0  # the prior flipped it
    # a content-free input calibrated by itself alone is uniform
    np.testing.assert_allclose(prompting.calibrate(content_free[:1], content_free[:1]),
                               [[0.5, 0.5]])


@pytest.mark.parametrize("template", ["{sentence} It was good.", "It was [MASK].",
                                      "{sentence} [MASK] [MASK]"])
def test_bad_template_is_a_clear_error(template):
    with pytest.raises(ValueError, match="must contain"):
        prompting.check_template(template)


def test_the_templates_mask_is_found_after_a_mask_in_the_sentence(tiny_bert):
    _, mlm_dir, _ = tiny_bert
    model = prompting.load(str(mlm_dir))
    assert prompting.fill("{sentence} It was [MASK].", "[MASK]", "<mask>") == (
        "<mask> It was <mask>.", 1)
    batch, _ = _inputs(model, ["[MASK]", "N/A", ""])
    ids = batch["ids"]
    assert ids[0, 1] == model.mask_id  # the content-free "[MASK]" sentence
    assert batch["mask_position"][0] == 4  # [CLS] [MASK] it was [MASK]
    assert all(ids[b, p] == model.mask_id for b, p in enumerate(batch["mask_position"]))
    assert batch["mask_position"][2] == 3  # [CLS] it was [MASK]


def test_multi_token_or_unknown_verbalizers_are_errors(tiny_bert):
    _, mlm_dir, _ = tiny_bert
    model = prompting.load(str(mlm_dir))
    with pytest.raises(ValueError, match="single token"):
        prompting.verbalizer_ids(model.tokenizer, {"0": ["bad plot"], "1": ["great"]}, ["0", "1"])
    with pytest.raises(ValueError, match="differ from the data"):
        prompting.verbalizer_ids(model.tokenizer, {"0": ["bad"]}, ["0", "1"])
    with pytest.raises(ValueError, match="neither"):
        prompting.parse_verbalizer("nice/awful")


def test_sample_shots_is_per_class_and_seeded():
    labels = np.array([0] * 10 + [1] * 5)
    index = prompting.sample_shots(labels, 4, seed=3, num_classes=2)
    assert len(set(index)) == 8 and np.bincount(labels[index]).tolist() == [4, 4]
    np.testing.assert_array_equal(index, prompting.sample_shots(labels, 4, 3, 2))
    assert not np.array_equal(index, prompting.sample_shots(labels, 4, 4, 2))
    with pytest.raises(ValueError, match="fewer than shots=6"):
        prompting.sample_shots(labels, 6, 0, 2)


def _experiment(arg=""):
    path = ROOT / "experiments" / "prompt_sst2.py"
    spec = importlib.util.spec_from_file_location("prompt_sst2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _cloze_config(**train):
    config = config_lib.base_config()
    config.model.task = "cloze"
    config.train.update(train)
    return config


@pytest.mark.parametrize("method,learning_rate,batch_size,epochs",
                         [("lora", 5e-2, 8, 15), ("full", 3e-3, 4, 20)])
def test_few_shot_training_reduces_the_loss(tiny_bert, method, learning_rate, batch_size,
                                            epochs):
    _, mlm_dir, _ = tiny_bert
    model = prompting.load(str(mlm_dir))  # the HF config's dropout (0.0)
    config = _cloze_config(num_epochs=float(epochs), batch_size=batch_size,
                           learning_rate=learning_rate, warmup_fraction=0.0, weight_decay=0.0)
    config.peft.method = method
    ids_CW, weights_CW = prompting.verbalizer_ids(model.tokenizer,
                                                  {"0": ["terrible"], "1": ["great"]}, ["0", "1"])
    labels = np.array([int(y) for _, y in ROWS], np.int32)
    before = jax.device_get(model.variables)
    trained, losses = prompt_sweep.train_few_shot(model, SENTENCES, labels, config, ids_CW,
                                                  weights_CW, seed=0)
    assert len(losses) == epochs and losses[-1] < 0.5 * losses[0], losses
    config.train.eval_batch_size = 8
    accuracy = lambda m: prompting.evaluate(m, SENTENCES, labels, ids_CW, weights_CW,
                                            config)["accuracy_raw"]
    assert accuracy(trained) >= 0.875 and accuracy(trained) > accuracy(model)  # the base: 0.5
    after = jax.device_get(trained.variables["params"])
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                           before["params"], after))
    # The loaded model is untouched (the step donates only its own copy of what trains).
    np.testing.assert_array_equal(jax.device_get(model.variables)["params"]["head"]["bias"],
                                  before["params"]["head"]["bias"])
    if method == "lora":  # frozen base (MLM head included) bit-identical; LoRA learned
        assert not any(changed)
        assert "peft" in trained.variables and trained.encoder.peft.lora_rank == 8
    else:
        assert any(changed)
        assert not np.array_equal(after["head"]["bias"], before["params"]["head"]["bias"])


def _rows_files(folder):
    train, dev = folder / "train.tsv", folder / "dev.tsv"
    for path in (train, dev):
        path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in ROWS))
    return train, dev


def test_launcher_end_to_end(tiny_bert, tmp_path):
    """`python -m lmx.main` on experiments/prompt_sst2.py with flag overrides: one launch runs
    selection, zero-shot and k-shot x seeds into one results.json."""
    _, mlm_dir, _ = tiny_bert
    train, dev = _rows_files(tmp_path)
    out = tmp_path / "out"
    flags = [f"--config={ROOT / 'experiments' / 'prompt_sst2.py'}", f"--workdir={out}",
             f"--config.model.pretrained={mlm_dir}", f"--config.data.train_file={train}",
             f"--config.data.validation_file={dev}", "--config.data.text_column=sentence",
             "--config.data.label_column=label", "--config.data.validation_split=",
             "--config.prompt.shots=(0,2)",
             "--config.prompt.seeds=(0,1)", "--config.train.num_epochs=2",
             "--config.prompt.verbalizer_candidates=('great/terrible','good/bad')"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "lmx.main", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["eval_examples"] == len(ROWS) and results["head"] == "mlm"
    assert set(results["verbalizer_selection"]["candidates"]) == {"great/terrible", "good/bad"}
    assert results["verbalizer"] == prompting.SENTIMENT_VERBALIZERS[
        results["verbalizer_selection"]["chosen"]]
    for key in ("accuracy_raw", "accuracy_calibrated"):
        assert 0 <= results["zero_shot"][key] <= 1
        per_seed = [r[key] for r in results["few_shot"]["2"]["per_seed"]]
        assert len(per_seed) == 2
        assert results["few_shot"]["2"][key]["mean"] == pytest.approx(np.mean(per_seed))
    assert all(len(r["epoch_losses"]) == 2 for r in results["few_shot"]["2"]["per_seed"])
    assert json.loads((out / "config.json").read_text())["prompt"]["shots"] == [0, 2]
    assert "zero-shot" in proc.stdout and "2-shot (2 seeds)" in proc.stdout


@pytest.mark.parametrize("key,value,error", [
    ("prompt.template", "{sentence} It was great.", r"\[MASK\]"),
    ("peft.method", "houlsby", "method='houlsby'"), ("prompt.head", "lm", "head='lm'"),
    ("prompt.shots", (0, -1), "shots"), ("prompt.seeds", (), "seeds"),
    ("train.num_steps", 5, "whole epochs"), ("train.num_epochs", 2.5, "whole epochs"),
    ("data.validation_file", "", "validation_file is empty"),
    ("prompt.verbalizer_candidates", ("great/terrible,good/bad",), "neither")])
def test_run_rejects_bad_settings_before_loading(tmp_path, key, value, error):
    train, dev = _rows_files(tmp_path)
    config = _cloze_config()
    config.data.train_file, config.data.validation_file = str(train), str(dev)
    config.model.pretrained = str(tmp_path / "no_such_model")  # never reached
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=error):
        prompt_sweep.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_other_tasks_refuse_prompt_keys():
    config = config_lib.base_config()
    config.data.kind, config.model.size = "synthetic", "bert-tiny"
    config_lib.validate(config, 1)  # the defaults are fine
    config.prompt.shots = (0, 4)
    with pytest.raises(ValueError, match=r"prompt.shots=\(0, 4\) applies to model.task 'cloze'"):
        config_lib.validate(config, 1)


def _keys(config, prefix=""):
    keys = set()
    for key, value in config.items():
        keys |= _keys(value, f"{prefix}{key}.") if hasattr(value, "items") else {prefix + key}
    return keys


def test_experiment_file_builds_every_variant():
    for arg in ("", "runlocal", "runlocal,full"):
        config = _experiment(arg)
        assert _keys(config) == _keys(config_lib.base_config())  # the one schema, nothing added
        assert config.model.task == "cloze"
        prompting.check_template(config.prompt.template)
        for spec in (config.prompt.verbalizer, *config.prompt.verbalizer_candidates):
            assert sorted(prompting.parse_verbalizer(spec)) == ["0", "1"]
        config_lib.validate(config, 1)  # local files, or tfds:glue/sst2 without ../shared
    assert _experiment("runlocal,full").peft.method == "full"
    with pytest.raises(ValueError, match="unknown arg 'nope'"):
        _experiment("nope")
