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


def build(w: Workload | None, method: str, model_dir: str, num_labels: int):
    torch.manual_seed(0)
    if model_dir:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels)
    else:
        config = _random_config(w)
        model = (transformers.ResNetForImageClassification(config) if w.family == "resnet" else
                 transformers.AutoModelForSequenceClassification.from_config(config))
    if method == "lora":
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
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


def end_to_end(suite: Suite, model_dir: str, train_file: str, epochs: float = 0) -> dict:
    """LoRA on BANKING77: tokenizer per batch (as users do), AdamW, linear schedule."""
    texts, labels, train_idx, valid_idx, num_labels = _banking77(train_file)
    batch_size = suite.e2e_batch_size
    per_epoch = len(train_idx) // batch_size
    total = int(math.ceil(epochs * per_epoch)) if epochs else suite.e2e_steps
    with measure.PeakRss() as rss:
        start = time.perf_counter()
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        model = build(None, "lora", model_dir, num_labels)
        model.train()
        opt, sched = optimizer(model, suite.learning_rate_lora, suite.warmup_fraction, total)
        setup_s = time.perf_counter() - start
        rng, order, loss = np.random.default_rng(0), np.array([], np.int64), None
        for step in range(total):
            if step % per_epoch == 0:
                order = rng.permutation(train_idx)
            rows = order[(step % per_epoch) * batch_size:][:batch_size]
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                            max_length=suite.e2e_max_length, return_tensors="pt").to(DEVICE)
            loss = train_step(model, opt, sched, {**enc, "labels": torch.from_numpy(
                labels[rows]).to(DEVICE)})
        final_loss = float(loss)
        wall_s = time.perf_counter() - start
    out = {"side": "torch", "dtype": "float32", "steps": total, "batch_size": batch_size,
           "wall_s": wall_s, "setup_s": setup_s, "examples_per_s": total * batch_size / wall_s,
           "final_loss": final_loss, **rss.result()}
    if epochs:
        out["validation_accuracy"] = _accuracy(model, tokenizer, texts, labels, valid_idx,
                                               suite.e2e_max_length)
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
