"""Language modelling: causal LM on a token stream, BERT-style masked LM on lines."""
from __future__ import annotations

import math
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lmx import metrics
from lmx.data import sources, transforms
from lmx.tasks.base import IGNORE, MASK_TOKENS, Datasets, Task, eval_token_batches, export_hf
from lmx.tasks.classification import SequenceClassification


class CausalLM(Task):
    """Next-token prediction on a raw text corpus: windows of T+1 tokens at offsets drawn
    from (seed, step); validation = `data.validation_file` or the corpus' last fraction."""

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        tokenizer, folder = sources.tokenizer_for(config, workdir)
        text = sources.read_corpus(d.train_file, d.train_split, d)
        if sources.separate_validation(d):
            train_text = text
            valid_text = sources.read_corpus(d.validation_file or d.train_file,
                                             d.validation_split, d)
        else:
            train_text, valid_text = sources.carve(text, d, by="tail")
        encode = lambda t: np.asarray(  # noqa: E731
            tokenizer.encode(t, add_special_tokens=False), np.int32)
        self.chars_per_token = len(valid_text) / max(len(encode(valid_text)), 1)
        if getattr(tokenizer, "replaced", 0):  # data.unknown_char: say how much was mapped
            logging.warning("data.unknown_char=%r stands for %d validation characters outside "
                            "the vocabulary (%.3f%%)", d.unknown_char, tokenizer.replaced,
                            100 * tokenizer.replaced / max(len(valid_text), 1))
        return Datasets(encode(train_text), encode(valid_text), None, [], tokenizer.pad_id,
                        vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)

    def steps_per_epoch(self, split, batch_size: int) -> int:
        return max(1, (len(split) - 1) // (batch_size * self.config.data.max_length))

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        B, T = self.config.train.batch_size, self.config.data.max_length
        if len(split) <= T + 1:
            raise ValueError(f"the training text has {len(split)} tokens, fewer than "
                             f"data.max_length + 1 = {T + 1}")
        for step in range(start_step, 2**62):
            offsets_B = np.random.default_rng([self.config.seed, step]).integers(
                0, len(split) - T - 1, B)
            yield self._windows(split, offsets_B, T)

    @staticmethod
    def _windows(stream, offsets_B, T) -> dict[str, np.ndarray]:
        index_BT = offsets_B[:, None] + np.arange(T + 1)
        tokens_BT = stream[index_BT]
        B = len(offsets_B)
        return {"ids": tokens_BT[:, :-1], "labels": tokens_BT[:, 1:],
                "mask": np.ones((B, T), bool), "token_types": np.zeros((B, T), np.int32),
                "weights": np.ones((B,), np.float32)}

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        """Non-overlapping windows over the whole split (the tail shorter than T is skipped)."""
        B, T = self.config.train.eval_batch_size, self.config.data.max_length
        offsets = np.arange(0, len(split) - T - 1 + 1, T)
        for start in range(0, len(offsets), B):
            chunk = offsets[start:start + B]
            batch = self._windows(split, np.resize(chunk, B), T)
            batch["weights"][len(chunk):] = 0.0  # filler rows
            yield batch, {}

    def scores(self, split, collected) -> dict[str, float]:
        nll = sum(float(o["loss_sum"]) for _, o in collected)
        count = sum(float(o["count"]) for _, o in collected)
        per_char = nll / count / self.chars_per_token
        return {"perplexity": metrics.perplexity(nll, count), "nats_per_char": per_char,
                "bits_per_character": per_char / math.log(2.0)}

    def headline(self) -> str:
        return "nats_per_char"

    def finish(self, trainer, workdir: str) -> dict:
        """A sample of `data.sample_tokens`; a fully trained decoder is also exported as a HF
        GPT-2 folder (+ char_vocab.json) that `model.pretrained` reads (e.g. LoRA-adapting it)."""
        from lmx.models import generate  # noqa: PLC0415
        tokenizer, n = trainer.datasets["tokenizer"], self.config.data.sample_tokens
        out, variables = {}, trainer.inference_variables()
        if self.config.peft.method == "full":
            out["exported"] = export_hf(trainer, workdir, variables)
            if hasattr(tokenizer, "chars"):
                tokenizer.save(os.path.join(out["exported"], "char_vocab.json"))
        if not n:
            return out
        T = self.config.data.max_length
        prompt = trainer.datasets["validation"][:T // 4]
        sampling = generate.Sampling(temperature=0.8, top_k=min(40, tokenizer.vocab_size))
        tokens = [int(i) for i in prompt]
        # The model only ever saw T positions: sample in rounds over a sliding window (the
        # last T/2 tokens as context, then up to T/2 new ones) instead of running past them.
        for round_ in range(2**31):
            if len(tokens) - len(prompt) >= n:
                break
            window = np.asarray(tokens[-(T // 2):], np.int32)
            new = generate.generate(trainer.model.module, variables, jnp.asarray(window[None]),
                                    jnp.ones((1, len(window)), bool),
                                    max_new_tokens=T - len(window), pad_id=self.pad_id,
                                    sampling=sampling,
                                    rng=jax.random.fold_in(jax.random.key(self.config.seed),
                                                           round_))
            tokens += [int(i) for i in np.asarray(new[0])]
        sample = tokenizer.decode(tokens[:len(prompt) + n])
        print(f"--- sample ({n} tokens after a {len(prompt)}-token prompt from validation) ---\n"
              f"{sample}\n---")
        with open(os.path.join(workdir, "sample.txt"), "w", encoding="utf-8") as f:
            f.write(sample)
        return {**out, "sample": sample}


class MaskedLM(Task):
    """BERT's masked-LM pre-training on the lines of a raw text corpus (data.mlm_rate of the
    tokens picked, split by data.mlm_split, 80/10/10 by default; a new mask every epoch);
    validation uses the epoch-0 mask, so its loss is comparable across runs."""
    plot_metrics = ("masked_accuracy", "mask_token_accuracy")

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        tokenizer, folder = sources.tokenizer_for(config, workdir)

        def encode(lines):  # truncated to max_length, keeping the closing special token
            out = []
            for line in lines:
                ids = tokenizer.encode(line)
                ids = ids if len(ids) <= d.max_length else ids[:d.max_length - 1] + ids[-1:]
                out.append({"ids": np.asarray(ids, np.int32)})
            return out

        lines = sources.corpus_lines(d.train_file, d, d.train_split)
        if sources.separate_validation(d):
            valid = sources.corpus_lines(d.validation_file or d.train_file, d, d.validation_split)
        else:
            lines, valid = sources.carve(lines, d, by="row")
        self._tokenizer, self._tokenizer_dir = tokenizer, folder
        self._mask_id = next((i for i in map(tokenizer.token_to_id, MASK_TOKENS)
                              if i is not None), None)
        if self._mask_id is None:
            raise ValueError(f"the tokenizer has none of the mask tokens {MASK_TOKENS}: "
                             "masked-LM pre-training needs one")
        return Datasets(encode(lines), encode(valid), None, [], tokenizer.pad_id,
                        vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)

    def _mask(self, example: dict) -> dict:
        t = self._tokenizer
        return transforms.mlm_mask(example, seed=self.config.seed, mask_id=self._mask_id,
                                      vocab_size=t.vocab_size, special_ids=t.special_ids,
                                      rate=self.config.data.mlm_rate,
                                      split=tuple(self.config.data.mlm_split))

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        for batch in self.bucketed_batches(split, start_step, transform=self._mask):
            # the vocabulary projection runs on the masked positions only (~15% of them)
            yield transforms.gather_targets(batch, fraction=2 * self.config.data.mlm_rate)

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        masked = [self._mask({**e, "index": i, "epoch": 0}) for i, e in enumerate(split)]
        for batch, host in eval_token_batches(self, masked):
            yield batch, {**host, "at_mask": batch["ids"] == self._mask_id}

    outputs = staticmethod(SequenceClassification.outputs)

    def scores(self, split, collected) -> dict[str, float]:
        """Perplexity and accuracy over every picked token; `mask_token_accuracy` over the
        ones shown as [MASK] only (comparable across data.mlm_split: unchanged picked tokens
        are easy targets, random ones hard)."""
        nll = sum(float(o["loss_sum"]) for _, o in collected)
        count = sum(float(o["count"]) for _, o in collected)
        correct = sum(float(o["correct"]) for _, o in collected)
        hits = shown = 0
        for host, out in collected:
            at_BT = host["at_mask"] & (host["labels"] != IGNORE)
            hits += int((out["predictions"][at_BT] == host["labels"][at_BT]).sum())
            shown += int(at_BT.sum())
        return {"perplexity": metrics.perplexity(nll, count),
                "masked_accuracy": correct / max(count, 1.0),
                "mask_token_accuracy": hits / max(shown, 1)}

    def headline(self) -> str:
        return "perplexity"

    def finish(self, trainer, workdir: str) -> dict:
        """Exports the pre-trained encoder as a HF folder (+ tokenizer) for transfer runs."""
        if self.config.peft.method != "full":
            return {}
        import shutil  # noqa: PLC0415
        out = export_hf(trainer, workdir, trainer.inference_variables())
        source = self._tokenizer_dir
        for name in ("tokenizer.model", "tokenizer_config.json", "tokenizer.json", "vocab.txt",
                     "special_tokens_map.json"):
            if source and os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), out)
        return {"exported": out}
