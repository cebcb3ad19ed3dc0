"""Train a sentencepiece tokenizer for models trained from scratch.

    python -m lmx.data.tokenizer train --input corpus.txt --vocab_size 8000 --out DIR [--model_type unigram]

DIR gets `tokenizer.model` and a Llama-style `tokenizer_config.json`, which
`lmx.hf.tokenizer.load_tokenizer(DIR)` reads (and transformers' LlamaTokenizer would). The model
is trained with the identity normalizer and whitespace kept, because that loader (like
transformers 5) runs the pieces without sentencepiece's normalizer; byte fallback (on by
default) makes every text round-trip. Specials: <unk> 0, <s> 1, </s> 2, <pad> 3, <mask> 4.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Sequence

from absl import app, flags

SPECIALS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
            "mask_token": "<mask>"}


def _check_inputs(paths: Sequence[str]) -> int:
    """Total bytes; an error naming --input for a missing or empty (whitespace-only) file."""
    total = 0
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"--input {path}: no such file")
        with open(path, "rb") as f:
            data = f.read()
        if not data.strip():
            raise ValueError(f"--input {path}: the file is empty (nothing to train on)")
        total += len(data)
    return total


def train(inputs: Sequence[str], vocab_size: int, out: str, model_type: str = "unigram",
          byte_fallback: bool = True, log=print) -> str:
    """Trains a model on `inputs` and writes `out`/tokenizer.model + tokenizer_config.json."""
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe", "char"):
        raise ValueError(f"--model_type {model_type!r}: expected unigram, bpe or char")
    minimum = len(SPECIALS) + (256 if byte_fallback else 0) + 1
    if vocab_size < minimum:
        raise ValueError(f"--vocab_size {vocab_size} is too small: the {len(SPECIALS)} special "
                         f"tokens{' and 256 byte pieces' if byte_fallback else ''} need "
                         f">= {minimum}")
    size = _check_inputs(inputs)
    os.makedirs(out, exist_ok=True)
    log(f"training a {model_type} sentencepiece model, vocab {vocab_size}, on {len(inputs)} "
        f"file(s), {size:,} bytes")
    start = time.time()
    try:
        spm.SentencePieceTrainer.train(
            input=",".join(inputs), model_prefix=os.path.join(out, "tokenizer"),
            vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
            byte_fallback=byte_fallback, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_digits=True, max_sentence_length=1 << 16,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, user_defined_symbols=["<mask>"],
            hard_vocab_limit=model_type != "char", train_extremely_large_corpus=False,
            minloglevel=2)
    except RuntimeError as e:
        found = re.search(r"ocabulary size (?:is )?too high \((\d+)\)\. Please set it to a "
                          r"value <= (\d+)", str(e))
        if found:
            raise ValueError(f"--vocab_size {vocab_size} is too large for this corpus: at most "
                             f"{found.group(2)}") from None
        found = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if found:
            raise ValueError(f"--vocab_size {vocab_size} is too small: this corpus has "
                             f"characters and specials needing {found.group(2)}") from None
        raise
    os.remove(os.path.join(out, "tokenizer.vocab"))
    config = {"tokenizer_class": "LlamaTokenizer", **SPECIALS, "add_bos_token": True,
              "add_eos_token": False, "legacy": False, "add_prefix_space": True,
              "model_max_length": 1 << 30, "sp_model_type": model_type}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    pieces = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    log(f"wrote {out}/tokenizer.model ({pieces.get_piece_size()} pieces) and "
        f"tokenizer_config.json in {time.time() - start:.1f} s")
    return out


def train_byte_bpe(texts: Sequence[str], vocab_size: int, out: str, *, specials: Sequence[str],
                   config: dict, chat_template: str = "") -> str:
    """A byte-level BPE (GPT-2 / Qwen / Llama 3 style) trained on `texts`, saved as a HF folder.

    `specials` become added special tokens (ids 0, 1, ... in order; never split, e.g. a chat
    template's <|im_start|>); `config` (named special tokens, tokenizer_class) and the optional
    `chat_template` go to tokenizer_config.json, which lmx.hf and transformers both read."""
    import tokenizers  # noqa: PLC0415
    from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

    if not any(t.strip() for t in texts):
        raise ValueError(f"{out}: no text to train a tokenizer on")
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    os.makedirs(out, exist_ok=True)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    config = {**config, **({"chat_template": chat_template} if chat_template else {})}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return out


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """The CLI's flags, defined on absl's FLAGS only when this module runs as `__main__`."""
    flags.DEFINE_multi_string("input", None, "A text file (repeatable).", flag_values=flag_values)
    flags.DEFINE_integer("vocab_size", None, "Pieces in the model.", flag_values=flag_values)
    flags.DEFINE_string("out", None, "Output folder.", flag_values=flag_values)
    flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe", "char"],
                      "Sentencepiece model type.", flag_values=flag_values)
    flags.DEFINE_bool("byte_fallback", True, "Unknown characters become byte pieces "
                      "(--nobyte_fallback: <unk>).", flag_values=flag_values)
    flags.mark_flags_as_required(["input", "vocab_size", "out"], flag_values=flag_values)
    return flag_values


def run_cli(argv: Sequence[str], flag_values: flags.FlagValues) -> int:
    """`train` (the one command); argv is what absl leaves: [program, command]."""
    if list(argv[1:]) != ["train"]:
        raise app.UsageError(f"expected the command `train`, got {list(argv[1:])}")
    try:
        train(flag_values.input, flag_values.vocab_size, flag_values.out,
              flag_values.model_type, byte_fallback=flag_values.byte_fallback,
              log=lambda m: print(m, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str]) -> int:
    """`python -m lmx.data.tokenizer ARGV...` in-process, its flags on a private FlagValues."""
    flag_values = define_flags(flags.FlagValues())
    return run_cli(flag_values(["lmx.data.tokenizer", *argv]), flag_values)


class CharTokenizer:
    """One id per character of a corpus (nanoGPT's shakespeare_char): exact bits per character.

    Ids follow the sorted characters after the pad id 0; a character not in the vocabulary
    is an error naming it, unless `unknown` names a vocabulary character to stand for it
    (adapting a model to a new corpus); `replaced` then counts the characters so mapped.
    """

    def __init__(self, chars: Sequence[str], unknown: str = ""):
        self.chars = list(chars)
        self._index = {c: i + 1 for i, c in enumerate(self.chars)}
        if unknown and unknown not in self._index:
            raise ValueError(f"unknown character stand-in {unknown!r} is not in the vocabulary "
                             f"of {len(self.chars)} characters")
        self.unknown, self.replaced = unknown, 0

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @classmethod
    def load(cls, path: str, unknown: str = "") -> "CharTokenizer":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f)["chars"], unknown)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"chars": self.chars}, f, ensure_ascii=False)

    pad_id, bos_id, eos_id, special_ids = 0, None, None, (0,)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as e:
            if not self.unknown:
                raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of "
                                 f"{len(self.chars)} characters") from None
        stand_in = self._index[self.unknown]
        ids = [self._index.get(c, 0) for c in text]
        self.replaced += ids.count(0)
        return [i or stand_in for i in ids]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(self.chars[i - 1] for i in (int(x) for x in ids) if i > 0)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: run_cli(argv, flags.FLAGS))
