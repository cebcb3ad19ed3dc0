"""The README's "PEFT compatibility matrix", checked cell by cell against the code.

A row is a PEFT method (config overrides), a column a HF family lmx reads. Each column is a
tiny random HF model that transformers writes to a folder; each cell runs the launcher's path
on it: `config.validate`, `build.build` (pretrained weights laid in, PEFT spec resolved,
trainable / frozen split), the adapted model's outputs at init against the base model's, and
two jitted train steps. "yes" means all of that works and checks out: every trainable leaf
moved, something besides the head trains, the frozen leaves came back bit-identical, the
method-specific checks of CHECKS pass. "refused: REASON" means validate or build raised a
ValueError whose message contains REASON.

A new method is one entry of METHODS (name -> config overrides) and one README row; a new
family one entry of HF_MODELS and one README column (the test fails until both sides agree).
"""
import dataclasses
import functools
import pathlib
import re

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

import lmx.hf
from lmx import config as config_lib, peft as peft_lib
from lmx.train import build
from lmx.train.step import forward, merge

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## PEFT compatibility matrix"
LEARNING_RATE = 1e-3
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Rows: method name -> config overrides (dotted keys of lmx/config.py).
METHODS = {
    "full": {"peft.method": "full"},
    "lora": {"peft.method": "lora"},
    "rslora": {"peft.method": "lora", "peft.lora.rslora": True},
    "dora": {"peft.method": "lora", "peft.lora.dora": True},
    "lora rank/alpha pattern": {
        "peft.method": "lora",
        "peft.lora.rank_pattern": ((r"params/.*(query|conv_0)/kernel", 2),),
        "peft.lora.alpha_pattern": ((r"params/.*(value|conv_1)/kernel", 4.0),)},
    "LoRA+": {"peft.method": "lora", "peft.lora.plus_lr_ratio": 16.0},
    "QLoRA int8": {"peft.method": "lora", "model.quantize_base": "int8"},
    "QLoRA nf4": {"peft.method": "lora", "model.quantize_base": "nf4"},
    "houlsby": {"peft.method": "houlsby"},
    "pfeiffer": {"peft.method": "pfeiffer"},
    "bitfit": {"peft.method": "bitfit"},
    "ia3": {"peft.method": "ia3"},
    "prompt": {"peft.method": "prompt"},
    "prefix": {"peft.method": "prefix"},
    "PiSSA": {"peft.method": "lora", "peft.lora.init": "pissa"},
    "OLoRA": {"peft.method": "lora", "peft.lora.init": "olora"},
    "LoRA on the token table": {
        "peft.method": "lora",
        "peft.lora.targets": (r"params/embed/token/embedding",
                              r"params/layer_\d+/attention/(query|value)/kernel")},
    "LN tuning": {"peft.method": "ln_tuning"},
    "P-tuning": {"peft.method": "p_tuning", "peft.encoder_hidden_size": 8},
    "prefix projection": {"peft.method": "prefix", "peft.prefix_projection": True,
                          "peft.encoder_hidden_size": 8},
}
# Methods whose adapted model equals the base model at init (B = 0, scales 1, up = 0; LN
# tuning changes nothing until it trains).
INIT_EQUALS_BASE = ("lora", "ia3", "houlsby", "pfeiffer", "ln_tuning")
# Rows whose frozen base is the residual W - s A B (PiSSA / OLoRA): at init the adapted model
# equals the ORIGINAL base up to float rounding, not bit for bit.
RESIDUAL_INIT = {"PiSSA": 1e-5, "OLoRA": 1e-5}

# Columns: HF family (lmx.hf.FAMILIES) -> a tiny random transformers model of it.
_TEXT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
             intermediate_size=16, max_position_embeddings=32, num_labels=3)
_DECODER = dict(_TEXT, num_key_value_heads=1, pad_token_id=0)
_AUTO = transformers.AutoModelForSequenceClassification.from_config
HF_MODELS = {
    "bert": lambda: _AUTO(transformers.BertConfig(**_TEXT, type_vocab_size=2)),
    "distilbert": lambda: _AUTO(transformers.DistilBertConfig(
        vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=16,
        max_position_embeddings=32, num_labels=3)),
    "gpt2": lambda: _AUTO(transformers.GPT2Config(
        vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32, pad_token_id=0,
        num_labels=3)),
    "llama": lambda: _AUTO(transformers.LlamaConfig(**_DECODER, tie_word_embeddings=False)),
    "qwen2": lambda: _AUTO(transformers.Qwen2Config(**_DECODER)),
    "qwen3": lambda: _AUTO(transformers.Qwen3Config(**_DECODER, head_dim=8)),
    "mistral": lambda: _AUTO(transformers.MistralConfig(**_DECODER, sliding_window=16)),
    "gemma2": lambda: _AUTO(transformers.Gemma2Config(**_DECODER, head_dim=8, sliding_window=16)),
    "gemma3": lambda: _AUTO(transformers.Gemma3TextConfig(**_DECODER, head_dim=8,
                                                          sliding_window=16)),
    "vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        image_size=16, patch_size=8, num_labels=3)),
    "resnet": lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], layer_type="basic",
        num_labels=3)),
}
IMAGE_SIZE = 16
# lmx family (config.model.family) per HF family; the rest are "transformer"
LMX_FAMILY = {"vit": "vit", "resnet": "resnet"}
ENCODERS = ("bert", "distilbert")  # the others' classifiers read the last token
# Per lmx family: what a method needs there (ResNet's LoRA targets are convolutions).
FAMILY_OVERRIDES = {
    "resnet": {"peft.lora.targets": (r"params/stage_\d+/block_\d+/conv_\d+/kernel",)}}


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _check_dora(built, steps):
    magnitudes = [k for k in _flat(built.state.trainable) if k.endswith("/lora_magnitude")]
    return [] if magnitudes else ["no trainable lora_magnitude"]


def _check_rslora(built, steps):
    spec = built.module.peft
    expected = spec.lora_alpha / np.sqrt(spec.lora_rank)
    return [] if spec.lora_rslora and spec.lora_scale == expected else [
        f"LoRA scale {spec.lora_scale}, rsLoRA's alpha / sqrt(r) is {expected}"]


def _check_pattern(built, steps):
    spec, problems = built.module.peft, []
    for path, a in _flat(built.state.trainable).items():
        if path.endswith("/lora_a"):
            module = path.split("/", 1)[1].rsplit("/", 1)[0]
            rank = 2 if re.search(r"(query|conv_0)$", module) else spec.lora_rank
            alpha = 4.0 if re.search(r"(value|conv_1)$", module) else spec.lora_alpha
            if a.shape[-1] != rank or spec.lora_scale_of(tuple(module.split("/"))) != alpha / rank:
                problems.append(f"{module}: rank {a.shape[-1]} (expected {rank}), scale "
                                f"{spec.lora_scale_of(tuple(module.split('/')))} (expected "
                                f"{alpha / rank})")
    return problems


def _check_lora_plus(built, steps):
    """Adam's first update is about lr per element; LoRA+ gives B 16x that."""
    before, after = _flat(steps[0]), _flat(steps[1])
    moved = max(np.abs(after[k] - before[k]).max() for k in before if k.endswith("/lora_b"))
    if moved > 8 * LEARNING_RATE:
        return []
    return [f"B moved {moved:.2g} in step 1, plain LoRA's learning rate is {LEARNING_RATE}"]


def _check_quantized(kind):
    def check(built, steps):
        frozen = _flat(built.frozen)
        spec = built.module.peft
        wanted = {f"params/{m}/kernel/codes" for m in spec.quantized}
        if not wanted or not wanted <= set(frozen):
            return [f"quantized kernels {sorted(wanted)[:2]} not all in the frozen params"]
        dtype = np.int8 if kind == "int8" else np.uint8
        return [f"{k} is {frozen[k].dtype}" for k in wanted if frozen[k].dtype != dtype]
    return check


def _check_bitfit(built, steps):
    trained = [k for k in _flat(built.state.trainable) if not k.startswith("params/head/")]
    return [f"bitfit trains {k}" for k in trained if not k.endswith("/bias")]


# Method-specific checks of a "yes" cell: (built, [trainable at step 0, 1, 2]) -> problems.
CHECKS = {"dora": _check_dora, "rslora": _check_rslora, "lora rank/alpha pattern": _check_pattern,
          "LoRA+": _check_lora_plus, "QLoRA int8": _check_quantized("int8"),
          "QLoRA nf4": _check_quantized("nf4"), "bitfit": _check_bitfit}


def readme_matrix() -> tuple[list[str], dict[str, dict[str, str]]]:
    """(columns, {row: {column: cell}}) of the markdown table under HEADING."""
    text = README.read_text()
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    split = lambda line: [c.strip().strip("`") for c in line.strip("|").split("|")]
    columns = split(lines[0])[1:]
    rows = {}
    for line in lines[2:]:
        name, *cells = split(line)
        assert len(cells) == len(columns), f"README matrix row {name!r}: {len(cells)} cells"
        rows[name] = dict(zip(columns, cells))
    return columns, rows


def test_readme_matrix_covers_every_method_and_family():
    columns, rows = readme_matrix()
    families = set(lmx.hf.FAMILIES)
    assert set(columns) == families, f"README columns vs lmx.hf.FAMILIES: {set(columns) ^ families}"
    assert set(HF_MODELS) == families, f"HF_MODELS vs lmx.hf.FAMILIES: {set(HF_MODELS) ^ families}"
    assert set(rows) == set(METHODS), f"README rows vs METHODS: {set(rows) ^ set(METHODS)}"
    methods = {overrides["peft.method"] for overrides in METHODS.values()}
    missing = set(peft_lib.METHODS) - methods
    assert not missing, f"lmx.peft.METHODS without a row in METHODS: {missing}"
    for row, cells in rows.items():
        for column, cell in cells.items():
            assert cell == "yes" or cell.startswith("refused: "), f"{row} x {column}: {cell!r}"


def _config(family: str, folder: str, overrides: dict):
    c = config_lib.base_config()
    c.model.family = LMX_FAMILY.get(family, "transformer")
    c.model.pretrained = folder
    if c.model.family != "resnet":  # (ResNet has no dropout)
        c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    if c.model.family != "transformer":
        c.model.image_size = IMAGE_SIZE
    elif family not in ENCODERS:
        c.model.pooling = "last"
    c.data.kind, c.data.max_length, c.data.pad_multiple = "synthetic", 8, 8
    c.peft.num_prompt_tokens, c.peft.adapter_size = 2, 4
    c.train.batch_size = c.train.eval_batch_size = 2
    c.train.learning_rate, c.train.warmup_fraction, c.train.weight_decay = LEARNING_RATE, 0.0, 0.0
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    for key, value in {**FAMILY_OVERRIDES.get(c.model.family, {}), **overrides}.items():
        *sections, name = key.split(".")
        node = c
        for section in sections:
            node = node[section]
        node[name] = value
    return c


def _batch(family: str) -> dict:
    rng = np.random.default_rng(0)
    batch = {"labels": np.array([0, 2], np.int32), "weights": np.ones(2, np.float32)}
    if family in LMX_FAMILY:
        images_BHWC = rng.normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
        return {**batch, "images": images_BHWC}
    return {**batch, "ids": rng.integers(3, 60, (2, 8)).astype(np.int32),
            "mask": np.ones((2, 8), np.int32), "token_types": np.zeros((2, 8), np.int32)}


def _base_module(module):
    """The same model without PEFT (a QLoRA base stays quantized)."""
    spec = module.peft
    return module.clone(peft=dataclasses.replace(peft_lib.NO_PEFT, quantized=spec.quantized,
                                                 quantization=spec.quantization))


_BASE_LOGITS = {}  # (folder, model.quantize_base) -> the base model's logits


@functools.cache
def _mesh():
    """One mesh for every cell (jit caches key on it)."""
    return jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))


def run_cell(family: str, folder: str, row: str) -> tuple[str, list[str]]:
    """("refused", [the error message]) or ("yes", [problems found])."""
    config = _config(family, folder, METHODS[row])
    try:
        config_lib.validate(config, 1)
        with jax.disable_jit():  # init eagerly: measured faster here than 3 compiles a cell
            built = build.build(config, 3, mesh=_mesh(), rules=())
    except ValueError as e:
        return "refused", [str(e)]
    problems, batch = [], _batch(family)
    variables = merge(built.state.trainable, built.frozen, built.state.model_state)
    if config.peft.method in INIT_EQUALS_BASE:
        adapted, _ = forward(built.module, variables, batch, train=False)
        key = (folder, config.model.quantize_base)  # the same base for every row
        if key not in _BASE_LOGITS:  # (a residual row's params are not the base)
            assert row not in RESIDUAL_INIT, f"{row}: a plain LoRA row must run before it"
            base_variables = {k: v for k, v in variables.items() if k != "peft"}
            _BASE_LOGITS[key] = forward(_base_module(built.module), base_variables, batch,
                                        train=False)[0]
        base = _BASE_LOGITS[key]
        if row in RESIDUAL_INIT:
            error = float(np.abs(np.asarray(adapted) - np.asarray(base)).max())
            if error > RESIDUAL_INIT[row]:
                problems.append(f"at init the adapted model differs from the base by {error:.3g}")
        elif not np.array_equal(np.asarray(adapted), np.asarray(base)):
            problems.append(f"at init the adapted model differs from the base by "
                            f"{np.abs(np.asarray(adapted) - np.asarray(base)).max():.3g}")
    frozen = jax.device_get(built.frozen)
    # the launcher's jitted step, compiled at XLA's lowest optimisation level (a third less
    # compile time; the same program)
    step = built.jit_train_step().lower(built.state, built.frozen, batch).compile(FAST_COMPILE)
    state = built.state
    trainables = [jax.device_get(state.trainable)]
    for _ in range(2):
        state, _ = step(state, built.frozen, batch)
        trainables.append(jax.device_get(state.trainable))
    before, after = _flat(trainables[0]), _flat(trainables[-1])
    problems += [f"{k} did not move" for k in before if np.array_equal(before[k], after[k])]
    if all(k.startswith("params/head/") for k in before):
        problems.append("only the task head trains")
    if not jax.tree.all(jax.tree.map(np.array_equal, frozen, jax.device_get(built.frozen))):
        problems.append("a frozen leaf changed")
    if row in CHECKS:
        problems += CHECKS[row](built, trainables)
    return "yes", problems


@pytest.fixture(scope="module")
def readme_rows():
    return readme_matrix()[1]


@pytest.mark.parametrize("family", lmx.hf.FAMILIES)
def test_every_cell_of_a_family_does_what_the_readme_says(family, tmp_path, readme_rows):
    torch.manual_seed(0)
    HF_MODELS[family]().save_pretrained(tmp_path)
    disagreements = []
    for row in METHODS:
        claimed = readme_rows.get(row, {}).get(family, "(no README cell)")
        outcome, details = run_cell(family, str(tmp_path), row)
        if claimed == "yes" and (outcome != "yes" or details):
            disagreements.append(f"{row}: README says yes; {outcome}: {details}")
        elif claimed.startswith("refused: ") and not (
                outcome == "refused" and claimed[len("refused: "):] in details[0]):
            disagreements.append(f"{row}: README says {claimed!r}; {outcome}: {details}")
        elif claimed != "yes" and not claimed.startswith("refused: "):
            disagreements.append(f"{row}: README cell {claimed!r}; {outcome}: {details}")
    assert not disagreements, f"{family}:\n  " + "\n  ".join(disagreements)
