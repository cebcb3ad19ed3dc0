"""Chat-format supervised fine-tuning of a decoder, scored by exact match of greedy answers.

Conversations come from chat JSONL (`data.kind="chat"`, lmx.data.readers.read_conversations)
or from a labelled text file (`data.kind="csv_classification"`): each row becomes
[system: data.system_prompt (if set), user: text, assistant: label name], and validation is
carved per label exactly as the classifier carves it, so the two score the same queries.
Every conversation is rendered through the tokenizer folder's chat template
(lmx.hf.chat_template) and encoded with a loss on the turns of `data.loss_roles` only
(lmx.data.chat); `data.packing` packs several whole conversations per row of
`data.max_length` tokens (lmx.data.batching.pack_whole) with segment ids and positions that
restart per conversation (attention never crosses them; the model reads `segment_ids`).

Loss: the mean next-token cross-entropy over the loss-turn tokens of the batch (every such
token counts once, whichever row or conversation it sits in; the same for packed and padded
batches). Validation: that loss, and `exact_match`: the greedy answer to each conversation's
last assistant turn (prompted with the turns before it), cut at the turn's stop token,
decoded and stripped, equal to the reference stripped.

Without a pretrained model or tokenizer folder, `data.tokenizer_vocab_size` > 0 trains a
byte-level BPE with ChatML's special tokens and template on the training conversations
(WORKDIR/tokenizer; Qwen2.5's template renders conversations that have a system turn
identically). Axis legend: B batch, T length, N new tokens.
"""
from __future__ import annotations

import os
from typing import Iterator

import jax.numpy as jnp
import numpy as np
from absl import logging

from lmx.data import batching, readers, sources, tokenizer as tokenizer_lib
from lmx.data.chat import ChatFormat
from lmx.hf import chat_template, pretrained
from lmx.tasks.base import Datasets, Task, export_hf

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt "
          "%}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class ChatSFT(Task):
    """Chat SFT (module docstring)."""
    plot_metrics = ("exact_match",)

    def _conversations(self, path: str, split: str) -> tuple[list[dict], list[str]]:
        """Records {"messages", "where"} and, for labelled text, the label of each."""
        d = self.config.data
        if d.kind == "chat":
            local = sources.local_file(path)
            rows = readers.read_conversations(local)
            return [{"messages": r["messages"], "where": f"{local}:{r['line']}"}
                    for r in rows], []
        local = sources.local_file(path)
        rows = readers.read_delimited(local, d.text_column, d.label_column)
        system = [{"role": "system", "content": d.system_prompt}] if d.system_prompt else []
        return [{"messages": system + [{"role": "user", "content": r["text"]},
                                       {"role": "assistant", "content": r["label"]}],
                 "where": f"{local}:{r['line']}"} for r in rows], [r["label"] for r in rows]

    def _split(self, train: list[dict], labels: list[str]) -> tuple[list[dict], list[dict]]:
        d = self.config.data
        if not labels:
            return sources.carve(train, d, by="row")
        names = (readers.read_label_names(d.labels_file) if d.labels_file
                 else sorted(set(labels)))
        ids = np.asarray([names.index(x) for x in labels])
        train_index, valid_index = sources.stratified_split(ids, d.validation_fraction,
                                                            d.split_seed)
        return [train[i] for i in train_index], [train[i] for i in valid_index]

    def _format(self, config, workdir: str, train: list[dict]) -> tuple[ChatFormat, str]:
        d = config.data
        if not config.model.pretrained and not d.tokenizer and d.tokenizer_vocab_size:
            folder = os.path.join(workdir, "tokenizer")
            if not os.path.exists(os.path.join(folder, "tokenizer.json")):  # resumes reuse it
                texts = [m["content"] for c in train for m in c["messages"]]
                tokenizer_lib.train_byte_bpe(
                    texts, d.tokenizer_vocab_size, folder, specials=CHATML_SPECIALS,
                    config={"tokenizer_class": "PreTrainedTokenizerFast",
                            "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                    chat_template=CHATML)
        else:
            folder = d.tokenizer or str(pretrained.resolve_model_dir(config.model.pretrained))
        tokenizer = pretrained.load_tokenizer(folder)
        return ChatFormat(tokenizer, chat_template.load_chat_template(folder),
                          chat_template.special_tokens(folder)), folder

    def _encode(self, conversations: list[dict]) -> list[dict]:
        """Examples {ids, labels, prompt, answer, stop}; answer = the last assistant turn."""
        d, out = self.config.data, []
        for c in conversations:
            messages = c["messages"]
            example = self.format.encode_conversation(messages, tuple(d.loss_roles), c["where"])
            if len(example["ids"]) > d.max_length:
                raise ValueError(f"{c['where']}: the conversation has {len(example['ids']) + 1}"
                                 f" tokens, more than data.max_length + 1 = {d.max_length + 1}")
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            out.append({**example, "prompt": self.format.prompt_ids(messages[:last]),
                        "answer": messages[last]["content"].strip()})
        return out

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        train, labels = self._conversations(d.train_file, d.train_split)
        if d.validation_file:
            validation, _ = self._conversations(d.validation_file, d.validation_split)
        else:
            train, validation = self._split(train, labels)
        self.format, self.folder = self._format(config, workdir, train)
        first = next(c["messages"] for c in train)
        last = max(i for i, m in enumerate(first) if m["role"] == "assistant")
        self.stop_id = self.format.stop_id(first[:last + 1])
        test = self._encode(self._conversations(d.test_file, d.test_split)[0]) \
            if d.test_file else None
        train, validation = self._encode(train), self._encode(validation)
        answer_tokens = [int((t["labels"] >= 0).sum()) for t in train]
        self.max_new_tokens = max(answer_tokens) + 1  # the longest training turn and its stop
        tokenizer = self.format.tokenizer
        logging.info("chat SFT: %d train / %d validation conversations, stop token %d (%r)",
                     len(train), len(validation), self.stop_id,
                     tokenizer.decode([self.stop_id], skip_special_tokens=False))
        return Datasets(train, validation, test, [], tokenizer.pad_id,
                        vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)

    def steps_per_epoch(self, split, batch_size: int) -> int:
        pack = self.config.data.max_length if self.config.data.packing else 0
        return batching.steps_per_epoch(split, batch_size, pack_length=pack)

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        c = self.config
        if not c.data.packing:
            return self.bucketed_batches(split, start_step)
        return batching.train_batches(split, c.train.batch_size, seed=c.seed,
                                      start_step=start_step, pad_id=self.pad_id,
                                      pack_length=c.data.max_length, pack_whole=True)

    def scores(self, split, collected) -> dict[str, float]:
        return {}  # the loss over assistant tokens is the loop's; exact match generates

    def generated_scores(self, trainer, split) -> dict[str, float]:
        """Exact match of the greedy answers (module docstring)."""
        answers = self.generate_answers(trainer.model.module, trainer.inference_variables(),
                                        split)
        hits = sum(a == e["answer"] for a, e in zip(answers, split))
        return {"exact_match": hits / max(len(split), 1)}

    def generate_answers(self, module, variables, split) -> list[str]:
        """Greedy answers to each example's prompt, batched by length with left padding."""
        from lmx.models import generate  # noqa: PLC0415
        B, multiple = self.config.train.eval_batch_size, self.config.data.pad_multiple
        order = np.argsort([len(e["prompt"]) for e in split], kind="stable")
        answers = [""] * len(split)
        for start in range(0, len(order), B):
            index = order[start:start + B]
            T = multiple * -(-max(len(split[i]["prompt"]) for i in index) // multiple)
            ids_BT = np.full((B, T), self.pad_id, np.int32)
            mask_BT = np.zeros((B, T), bool)
            for b, i in enumerate(index):
                prompt = split[i]["prompt"]
                ids_BT[b, T - len(prompt):], mask_BT[b, T - len(prompt):] = prompt, True
            mask_BT[len(index):, -1] = True  # filler rows: one token, ignored
            new_BN = np.asarray(generate.generate(
                module, variables, jnp.asarray(ids_BT), jnp.asarray(mask_BT),
                max_new_tokens=self.max_new_tokens, eos_id=self.stop_id, pad_id=self.pad_id))
            for b, i in enumerate(index):
                tokens = [int(t) for t in new_BN[b]]
                tokens = tokens[:tokens.index(self.stop_id)] if self.stop_id in tokens else tokens
                answers[i] = self.format.tokenizer.decode(tokens).strip()
        return answers

    def headline(self) -> str:
        return "exact_match"

    def finish(self, trainer, workdir: str) -> dict:
        """A fully trained model is exported as a HF folder with its tokenizer and chat
        template (the next stage's `model.pretrained`); a few validation answers are logged."""
        out = {}
        if self.config.peft.method == "full":
            import shutil  # noqa: PLC0415
            out["exported"] = export_hf(trainer, workdir, trainer.inference_variables())
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "chat_template.jinja"):
                if os.path.exists(os.path.join(self.folder, name)):
                    shutil.copy(os.path.join(self.folder, name), out["exported"])
        sample = trainer.datasets["validation"][:8]
        for e, a in zip(sample, self.generate_answers(trainer.model.module,
                                                      trainer.inference_variables(), sample)):
            logging.info("answer %r, reference %r", a, e["answer"])
        return out
