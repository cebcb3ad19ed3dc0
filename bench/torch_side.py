"""The reference side: transformers + peft on torch, written as a user would (HF Trainer-free)."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time

import numpy as np
import torch
import transformers
from peft import LoraConfig, get_peft_model

from bench import measure
from bench.workloads import BANKING77, Suite, Workload
from lmx.data import readers, sources

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _random_config(w: Workload):
    """The HF config with lmx's shapes for `w.size` (random init on both sides)."""
    c = transformers
    configs = {
        "bert-base": lambda: c.BertConfig(),
        "bert-tiny": lambda: c.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64,
                                          max_position_embeddings=64),
        "gpt2-small": lambda: c.GPT2Config(pad_token_id=0),
        "gpt2-tiny": lambda: c.GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2,
                                          n_head=4, n_inner=64, pad_token_id=0),
        "resnet50": lambda: c.ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                                           depths=[3, 4, 6, 3], layer_type="bottleneck"),
        "resnet-tiny": lambda: c.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                              depths=[1, 1], layer_type="basic"),
    }
    config = configs[w.size]()
    config.num_labels = w.num_labels
    return config


def make_tiny_bert(dst: str, tokenizer_dir: str) -> str:
    """A random bert-tiny-shaped BERT folder with all-MiniLM-L6-v2's tokenizer (tiny suite)."""
    torch.manual_seed(0)
    vocab = sum(1 for _ in open(os.path.join(tokenizer_dir, "vocab.txt"), encoding="utf-8"))
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(dst)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(tokenizer_dir, name)):
            shutil.copy(os.path.join(tokenizer_dir, name), dst)
    return dst


def build(w: Workload | None, method: str, model_dir: str, num_labels: int,
          task: str = "SEQ_CLS"):
    torch.manual_seed(0)
    if model_dir:
        auto = (transformers.AutoModelForTokenClassification if task == "TOKEN_CLS" else
                transformers.AutoModelForSequenceClassification)
        model = auto.from_pretrained(model_dir, num_labels=num_labels)
    else:
        config = _random_config(w)
        model = (transformers.ResNetForImageClassification(config) if w.family == "resnet" else
                 transformers.AutoModelForSequenceClassification.from_config(config))
    if method == "lora":
        model = get_peft_model(model, LoraConfig(task_type=task, r=8, lora_alpha=16,
                                                 lora_dropout=0.0,
                                                 target_modules=["query", "value"]))
    return model.to(DEVICE)


def optimizer(model, lr: float, warmup_fraction: float, total_steps: int):
    """AdamW (no decay on biases / norms, as lmx) with linear warmup and decay to 0."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name or "LayerNorm" in name or "norm" in name
             else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = transformers.get_linear_schedule_with_warmup(
        opt, int(round(warmup_fraction * total_steps)), total_steps)
    return opt, sched


def train_step(model, opt, sched, inputs: dict) -> torch.Tensor:
    loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def _inputs(w: Workload, batch: dict[str, np.ndarray]) -> dict:
    t = lambda x: torch.from_numpy(np.asarray(x)).to(DEVICE)  # noqa: E731
    if w.family == "resnet":
        return {"pixel_values": t(batch["images"].transpose(0, 3, 1, 2).copy()),
                "labels": t(batch["labels"].astype(np.int64))}
    inputs = {"input_ids": t(batch["ids"].astype(np.int64)),
              "attention_mask": t(batch["mask"].astype(np.int64)),
              "labels": t(batch["labels"].astype(np.int64))}
    if not w.size.startswith("gpt2"):
        inputs["token_type_ids"] = t(batch["token_types"].astype(np.int64))
    return inputs


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def raw_step(w: Workload, suite: Suite, method: str, model_dir: str,
             batch: dict[str, np.ndarray]) -> dict:
    lr = suite.learning_rate_lora if method == "lora" else suite.learning_rate_full
    with measure.PeakRss() as rss:
        model = build(w, method, model_dir, w.num_labels)
        model.train()
        opt, sched = optimizer(model, lr, suite.warmup_fraction, 1000)
        inputs = _inputs(w, batch)

        def one():
            train_step(model, opt, sched, inputs).item()
            _sync()

        timing = measure.median_seconds(one, warmup=suite.warmup, repeats=suite.repeats)
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values()
                      for v in s.values() if torch.is_tensor(v))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # PEFT: the adapter (+ classifier); full: the whole model
        saved = measure.dir_bytes(tmp)
    params = list(model.parameters())
    return {"side": "torch", "dtype": "float32", "threads": torch.get_num_threads(), **timing,
            **rss.result(), "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "total_params": sum(p.numel() for p in params),
            "optimizer_state_bytes": state_bytes, "saved_trainable_bytes": saved}


def _banking77(train_file: str, validation_fraction: float = 0.1, seed: int = 0):
    """The split lmx's Trainer carves (`sources.stratified_split`), so both train on the same rows."""
    rows = readers.read_delimited(train_file, "text", "category")
    texts, label_strings = [r["text"] for r in rows], [r["label"] for r in rows]
    names = json.load(open(os.path.join(BANKING77, "categories.json"), encoding="utf-8"))
    labels = np.array([names.index(s) for s in label_strings], np.int64)
    train_idx, valid_idx = sources.stratified_split(labels, validation_fraction, seed)
    return list(texts), labels, train_idx, valid_idx, len(names)


def _epoch_batches(sampler: str, train_idx: np.ndarray, lengths, batch_size: int, epoch: int):
    """One epoch's batches of row indices, full batches only (N // B of them).

    "plain": a random permutation (a user's DataLoader(shuffle=True)); "grouped":
    transformers' own `LengthGroupedSampler` (what `TrainingArguments(group_by_length=True)`
    uses: megabatches of 50 batches sorted by length), seeded per epoch."""
    if sampler == "plain":
        order = np.random.default_rng([0, epoch]).permutation(train_idx)
    elif sampler == "grouped":
        from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: PLC0415
        grouped = LengthGroupedSampler(batch_size, lengths=[lengths[i] for i in train_idx],
                                       generator=torch.Generator().manual_seed(epoch))
        order = train_idx[np.fromiter(iter(grouped), np.int64)]
    else:
        raise ValueError(f"sampler={sampler!r}: expected 'plain' or 'grouped'")
    per_epoch = len(train_idx) // batch_size
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch)]


def _conll(train_file: str):
    """CoNLL-2003 sentences (IOB1 -> BIO, as lmx reads them) and lmx's label names."""
    sentences = readers.read_conll(train_file)
    names = ["O"] + sorted({t for s in sentences for t in s["tags"]} - {"O"})
    return sentences, names


def _encode_conll(tokenizer, sentences, names, max_length: int) -> list[dict]:
    """`is_split_into_words` encodings; the first sub-token of each word carries its tag
    (-100 elsewhere), as transformers' token-classification example does."""
    index = {n: i for i, n in enumerate(names)}
    enc = tokenizer([s["words"] for s in sentences], is_split_into_words=True, truncation=True,
                    max_length=max_length)
    out = []
    for n, s in enumerate(sentences):
        previous, labels = None, []
        for word in enc.word_ids(n):
            labels.append(-100 if word is None or word == previous else index[s["tags"][word]])
            previous = word
        out.append({"input_ids": enc["input_ids"][n], "attention_mask": enc["attention_mask"][n],
                    "token_type_ids": enc["token_type_ids"][n], "labels": labels})
    return out


def _collate(tokenizer, rows: list[dict]) -> dict:
    """Padding to the longest row of the batch (`DataCollatorWithPadding` /
    `DataCollatorForTokenClassification`, labels padded with -100)."""
    longest = max(len(r["input_ids"]) for r in rows)
    out = {k: torch.tensor([r[k] + [fill] * (longest - len(r[k])) for r in rows])
           for k, fill in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0),
                           ("token_type_ids", 0))}
    labels = [r["labels"] for r in rows]
    out["labels"] = torch.tensor(labels if not isinstance(labels[0], list) else
                                 [x + [-100] * (longest - len(x)) for x in labels])
    return {k: v.to(DEVICE) for k, v in out.items()}


def end_to_end(suite: Suite, model_dir: str, train_file: str, epochs: float = 0,
               sampler: str = "plain", task: str = "banking77", accuracy: bool = False
               ) -> dict:
    """LoRA (r=8, query/value) through a user's torch loop, wall time from nothing.

    BANKING77 with sampler "plain": random batches tokenized per batch (`padding=True`);
    sampler "grouped": the careful user's loop, the split tokenized once (as
    `datasets.map` would), `LengthGroupedSampler`, each batch padded to its longest row.
    CoNLL-2003 (`task="conll"`, token classification, `suite.conll_steps` steps) is always
    tokenized once (word alignment needs it), then sampled plain or grouped."""
    start = time.perf_counter()
    with measure.PeakRss() as rss:
        if task == "conll":
            sentences, names = _conll(train_file)
            train_idx, valid_idx = np.arange(len(sentences)), None
            max_length, num_labels = suite.conll_max_length, len(names)
        else:
            texts, labels, train_idx, valid_idx, num_labels = _banking77(train_file)
            max_length = suite.e2e_max_length
        batch_size = suite.e2e_batch_size
        per_epoch = len(train_idx) // batch_size
        total = (suite.conll_steps if task == "conll" else
                 int(math.ceil(epochs * per_epoch)) if epochs else suite.e2e_steps)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        model = build(None, "lora", model_dir, num_labels,
                      task="TOKEN_CLS" if task == "conll" else "SEQ_CLS")
        model.train()
        opt, sched = optimizer(model, suite.learning_rate_lora, suite.warmup_fraction, total)
        if task == "conll":
            encoded = _encode_conll(tokenizer, sentences, names, max_length)
        elif sampler == "grouped":
            enc = tokenizer(texts, truncation=True, max_length=max_length)
            encoded = [{"input_ids": enc["input_ids"][i],
                        "attention_mask": enc["attention_mask"][i],
                        "token_type_ids": enc["token_type_ids"][i], "labels": int(labels[i])}
                       for i in range(len(texts))]
        else:
            encoded = None
        lengths = None if encoded is None else [len(r["input_ids"]) for r in encoded]
        setup_s = time.perf_counter() - start
        batches, loss, padded, real = [], None, 0, 0
        for step in range(total):
            if step % per_epoch == 0:
                batches = _epoch_batches(sampler, train_idx, lengths, batch_size,
                                         step // per_epoch)
            rows = batches[step % per_epoch]
            if encoded is None:
                inputs = {**tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                      max_length=max_length, return_tensors="pt").to(DEVICE),
                          "labels": torch.from_numpy(labels[rows]).to(DEVICE)}
            else:
                inputs = _collate(tokenizer, [encoded[i] for i in rows])
            padded += inputs["input_ids"].numel()
            real += int(inputs["attention_mask"].sum())
            loss = train_step(model, opt, sched, inputs)
        final_loss = float(loss)
        wall_s = time.perf_counter() - start
    out = {"side": f"torch-{sampler}", "task": task, "dtype": "float32", "steps": total,
           "batch_size": batch_size, "wall_s": wall_s, "setup_s": setup_s,
           "examples": total * batch_size, "examples_per_s": total * batch_size / wall_s,
           "final_loss": final_loss,
           "tokens_padded": padded, "tokens_real": real, **rss.result()}
    if accuracy and task == "banking77":
        out["validation_accuracy"] = _accuracy(model, tokenizer, texts, labels, valid_idx,
                                               max_length)
    return out


@torch.no_grad()
def _accuracy(model, tokenizer, texts, labels, rows, max_length: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(rows), 128):
        chunk = rows[i:i + 128]
        enc = tokenizer([texts[j] for j in chunk], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(DEVICE)
        correct += int((model(**enc).logits.argmax(-1).cpu().numpy() == labels[chunk]).sum())
    return correct / len(rows)
