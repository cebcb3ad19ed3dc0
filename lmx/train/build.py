"""The one builder: config -> module, variables born sharded (pretrained weights laid over
init), the trainable / frozen split, the masked optimizer and the train state.

`build` is what the loop, the AOT check, `lmx.explain`, `lmx.hf`'s export and the benchmark
call; with `abstract=True` it returns shapes carrying their shardings instead of arrays (no
weight is read or materialised), which is what an ahead-of-time compile for a topology this
machine lacks needs. The family-specific parts come from `lmx.models.families`.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from lmx import config as config_lib, paths, peft as peft_lib, peft_init, quant
from lmx.models import families
from lmx.scale import sharding
from lmx.train import optim
from lmx.train.step import TRAINABLE_COLLECTIONS, TrainState, split, train_step

# Top-level param names a pretrained checkpoint need not have (initialised fresh, logged):
# the task head, and BERT's pooler (absent from checkpoints pre-trained without NSP).
NEW_FOR_TASK = ("head", "pooler")


@dataclasses.dataclass
class Model:
    module: nn.Module
    variables: Any  # unboxed, sharded: {"params", "peft"?, "batch_stats"?} (or abstract)
    shardings: Any  # NamedShardings, same tree as variables
    abstract: Any  # shapes boxed with logical axis names (for deriving optimizer shardings)
    pretrained_dir: str = ""


@dataclasses.dataclass
class Built:
    """A model ready to train: what `build` returns.

    `state` holds what trains (+ optimizer state, step, rng, BatchNorm statistics); `frozen`
    the rest of the learnable weights, never differentiated nor donated. A model that will
    carry several named PEFT trees (`peft/<adapter>/...`) keeps this shape: the labels and
    the split are computed over whatever collections `variables` has.
    """
    model: Model
    mesh: Any
    rules: Any
    labels: Any  # optim.TRAIN / optim.FREEZE per learnable leaf
    tx: optax.GradientTransformation
    state: TrainState
    state_shardings: TrainState
    frozen: Any
    total_steps: int
    grad_accum_steps: int = 1  # config.train.grad_accum_steps

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def jit_train_step(self, out_shardings: bool = True):
        """`step.train_step` jitted for this model: the state donated, frozen weights not."""
        out = ((self.state_shardings, sharding.replicated(self.mesh)) if out_shardings
               else None)
        return jax.jit(functools.partial(train_step, model=self.module, tx=self.tx,
                                         grad_accum_steps=self.grad_accum_steps),
                       out_shardings=out, donate_argnums=(0,))


def place(tree: Any, shardings: Any) -> Any:
    """`device_put` that also works with several processes (a jitted identity: host-local
    uncommitted scalars such as the step and rng become global replicated arrays)."""
    return jax.jit(lambda x: x, out_shardings=shardings)(tree)


def with_sharding(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying their shardings; a dimension the mesh does not divide is an
    error naming the parameter."""
    def attach(path, x, s):
        try:
            s.shard_shape(x.shape)
        except ValueError as e:
            raise ValueError(f"{jax.tree_util.keystr(path)} {x.shape} cannot be split as "
                             f"{s.spec} over mesh {dict(s.mesh.shape)}") from e
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    return jax.tree_util.tree_map_with_path(attach, tree, shardings)


def architecture(config: ml_collections.ConfigDict, num_labels: int,
                 vocab_size: int | None = None, load: bool = True):
    """(family config, pretrained variables or None, pretrained folder or "").

    Pretrained variables are lazy (`lmx.hf.stream`): `create` reads each straight into its
    sharding. `vocab_size`: a model trained from scratch takes its tokenizer's vocabulary. `load=False`
    reads only a pretrained folder's config.json (the AOT check needs no weights)."""
    m = config.model
    family = families.get(m.family)
    if not m.pretrained:
        return family.config(m, vocab_size), None, ""
    import lmx.hf  # noqa: PLC0415  (safetensors only needed here)
    from lmx.hf import pretrained  # noqa: PLC0415
    model_dir = pretrained.resolve_model_dir(m.pretrained)
    overrides = family.overrides(m)
    overrides.pop("image_size", None)  # a pretrained ViT's geometry is the checkpoint's
    task = family.hf_task or config_lib.model_task(m.task)
    if not load or m.random_init:
        module = lmx.hf.module_from_config(model_dir, task=task, num_labels=num_labels,
                                           **overrides)
        variables = None
    else:
        module, variables = lmx.hf.from_pretrained(model_dir, task=task, num_labels=num_labels,
                                                   fresh_heads=False, lazy=True, **overrides)
    if not isinstance(module, family.module_class):
        raise ValueError(f"config.model.pretrained={m.pretrained!r} is a "
                         f"{type(module).__name__}, not a {family.module_class.__name__} "
                         f"(config.model.family={m.family!r})")
    if variables is not None:  # weights and BatchNorm statistics; no task-specific extras
        variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    return module.cfg, variables, str(model_dir)


def peft_spec(config: ml_collections.ConfigDict, cfg, num_labels: int,
              inputs: tuple) -> peft_lib.PeftSpec:
    """`config.peft` resolved on the base model's parameter paths. Target patterns are written
    for unrolled layers (`layer_N`); a scanned model shares one block, so they are resolved on
    the unrolled paths and mapped onto `layers/block` (`peft.scanned_spec` refuses a choice
    that differs between layers)."""
    m, family = config.model, families.get(config.model.family)
    scanned = getattr(cfg, "scan_layers", False)
    unrolled = dataclasses.replace(cfg, scan_layers=False) if scanned else cfg
    base = family.make(unrolled, config_lib.model_task(m.task), num_labels, m.pooling, peft_lib.NO_PEFT)
    base_shapes = jax.eval_shape(lambda: nn.unbox(base.init(jax.random.key(0), *inputs)))
    spec = peft_lib.spec_from_config(config.peft, {"params": base_shapes["params"]})
    if m.quantize_base != "none":  # QLoRA: every linear kernel of the blocks, stored quantized
        kernels = paths.select({"params": base_shapes["params"]}, peft_lib.ALL_LINEAR,
                               what="config.model.quantize_base (peft.ALL_LINEAR)")
        spec = dataclasses.replace(
            spec, quantized=frozenset(p.split("/", 1)[1].rsplit("/", 1)[0] for p in kernels),
            quantization=quant.Scheme(m.quantize_base, double=m.quantize_double))
    return peft_lib.scanned_spec(spec, cfg.num_layers) if scanned else spec


def _overlay(variables: dict, shardings: dict, loaded: dict, source: str) -> dict:
    """Replaces init variables by pretrained ones (params, and ResNet's batch_stats); missing
    base variables and bad shapes are errors."""
    for collection in loaded:
        variables = _overlay_collection(variables, shardings, loaded[collection], source,
                                        collection)
    return variables


def _overlay_collection(variables: dict, shardings: dict, loaded: dict, source: str,
                        collection: str) -> dict:
    flat = traverse_util.flatten_dict(variables[collection])
    flat_sh = traverse_util.flatten_dict(shardings[collection])
    flat_loaded = traverse_util.flatten_dict(loaded)
    missing = [k for k in flat if k not in flat_loaded and k[0] not in NEW_FOR_TASK]
    mismatched = [f"{'/'.join(k)}: model {flat[k].shape} vs checkpoint {np.shape(v)}"
                  for k, v in flat_loaded.items() if k in flat and flat[k].shape != np.shape(v)]
    if missing or mismatched:
        raise ValueError(f"{source}: cannot load pretrained weights.\n  missing: "
                         f"{['/'.join(k) for k in missing]}\n  shape mismatch: {mismatched}")
    fresh = sorted("/".join(k) for k in flat if k not in flat_loaded)
    if fresh:
        logging.warning("%s: %d parameters initialised fresh (not in the checkpoint): %s",
                        source, len(fresh), fresh)
    unused = sorted("/".join(k) for k in flat_loaded if k not in flat)
    if unused:
        logging.warning("%s: %d pretrained tensors unused by this task: %s", source,
                        len(unused), unused)
    from lmx.hf import stream  # noqa: PLC0415  (safetensors only needed here)
    for k, v in flat_loaded.items():  # one tensor at a time, each device's slice read alone
        if k in flat:
            flat[k] = stream.place(v, flat_sh[k], flat[k].dtype)
    return {**variables, collection: traverse_util.unflatten_dict(flat)}


def quantize_loaded(loaded: dict, spec: peft_lib.PeftSpec) -> dict:
    """Pretrained variables with the kernels `spec` quantizes in their quantized store (each
    read whole, quantized jitted, one at a time); the rest untouched (still lazy)."""
    if not spec.quantized:
        return loaded
    from lmx.hf import stream  # noqa: PLC0415  (safetensors only needed here)
    flat = traverse_util.flatten_dict(loaded["params"])
    quantize = jax.jit(quant.quantize_kernel, static_argnums=1)
    for module in spec.quantized:
        key = (*module.split("/"), "kernel")
        if key in flat:  # a missing one is reported by _overlay
            kernel = stream.place(
                flat[key], jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), np.float32)
            flat[key] = quantize(kernel, spec.quantization)
    return {**loaded, "params": traverse_util.unflatten_dict(flat)}


def _check_length(config: ml_collections.ConfigDict, cfg) -> None:
    """Learned position tables end at max_len: a longer (padded) batch would read past it."""
    if getattr(cfg, "positions", None) != "learned":
        return
    d = config.data
    padded = -(-d.max_length // d.pad_multiple) * d.pad_multiple
    if padded + cfg.position_offset > cfg.max_len:
        raise ValueError(
            f"config.data.max_length={d.max_length} (padded to a multiple of "
            f"data.pad_multiple={d.pad_multiple}: {padded}) exceeds the model's "
            f"{cfg.max_len - cfg.position_offset} learned positions; lower max_length or "
            "pad_multiple")


def create(config: ml_collections.ConfigDict, num_labels: int, mesh, rules,
           rng: jax.Array, vocab_size: int | None = None, abstract: bool = False) -> Model:
    """The model named by `config.model` / `config.peft` with sharded variables (abstract:
    ShapeDtypeStructs with shardings, nothing read or materialised)."""
    m, family = config.model, families.get(config.model.family)
    cfg, loaded, model_dir = architecture(config, num_labels, vocab_size, load=not abstract)
    _check_length(config, cfg)
    inputs = family.dummy_inputs(m.image_size)
    spec = peft_spec(config, cfg, num_labels, inputs)
    module = family.make(cfg, config_lib.model_task(m.task), num_labels, m.pooling, spec)

    def init(key):
        return module.init({"params": key, "dropout": key}, *inputs)

    boxed = jax.eval_shape(init, rng)
    shardings = flax.core.unfreeze(
        sharding.logical_to_shardings(nn.get_partition_spec(boxed), mesh, rules))
    if abstract:
        variables = with_sharding(flax.core.unfreeze(nn.unbox(boxed)), shardings)
        return Model(module, variables, shardings, flax.core.unfreeze(boxed), model_dir)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        variables = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(rng)
    variables = flax.core.unfreeze(variables)
    if loaded is not None:
        variables = _overlay(variables, shardings, quantize_loaded(loaded, spec), model_dir)
    # DoRA's magnitude, PiSSA / OLoRA's A, B and residual: from the base now in place
    variables = peft_init.init_from_base(variables, spec)
    return Model(module, variables, shardings, flax.core.unfreeze(boxed), model_dir)


def learnable(variables: dict) -> dict:
    return {k: v for k, v in variables.items() if k in TRAINABLE_COLLECTIONS}


def trainable_labels(config: ml_collections.ConfigDict, variables: dict) -> Any:
    """TRAIN / FREEZE for every learnable leaf, from `config.peft` (the method's defaults
    see the variables: a tied-embedding causal LM has no head to train)."""
    tree = learnable(variables)
    return optim.trainable_labels(tree, peft_lib.trainable_patterns(config.peft, tree),
                                  what="config.peft.trainable")


def _check_quantized_frozen(labels: Any) -> None:
    """A quantized kernel has no gradient: a pattern that trains one is an error naming it."""
    flat = traverse_util.flatten_dict(labels, sep="/")
    trained = sorted(k for k, v in flat.items()
                     if v == optim.TRAIN and re.search(r"/kernel/(codes|absmax)", k))
    if trained:
        raise ValueError(f"config.peft.trainable trains quantized kernels (model.quantize_base "
                         f"freezes them): {trained[:4]}")


def build(config: ml_collections.ConfigDict, num_labels: int, *, mesh, rules,
          vocab_size: int | None = None, total_steps: int = 1000,
          abstract: bool = False) -> Built:
    """Model, trainable / frozen split, masked optimizer and train state for `config`.

    The rng of `config.seed` is split into the init key and the state's dropout key.
    """
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    model = create(config, num_labels, mesh, rules, init_rng, vocab_size, abstract)
    labels = trainable_labels(config, model.variables)
    _check_quantized_frozen(labels)
    plus_ratio = config.peft.lora.plus_lr_ratio if config.peft.method == "lora" else 0.0
    tx = optim.make_optimizer(config.train, labels, total_steps, plus_ratio)
    opt_shardings = sharding.logical_to_shardings(
        nn.get_partition_spec(jax.eval_shape(tx.init, learnable(model.abstract))), mesh, rules)
    replicated = sharding.replicated(mesh)
    model_state = {k: v for k, v in model.variables.items() if k not in TRAINABLE_COLLECTIONS}
    state_shardings = TrainState(
        step=replicated, trainable=split(learnable(model.shardings), labels)[0],
        opt_state=opt_shardings,
        model_state={k: v for k, v in model.shardings.items() if k not in TRAINABLE_COLLECTIONS},
        rng=replicated)
    trainable, frozen = split(learnable(model.variables), labels)
    if abstract:
        state = TrainState(
            step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), trainable=trainable,
            opt_state=with_sharding(jax.eval_shape(tx.init, learnable(model.variables)),
                                    opt_shardings),
            model_state=model_state,
            rng=jax.ShapeDtypeStruct((), train_rng.dtype, sharding=replicated))
    else:
        opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(learnable(model.variables))
        state = place(TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                                 opt_state=opt_state, model_state=model_state, rng=train_rng),
                      state_shardings)
    return Built(model, mesh, rules, labels, tx, state, state_shardings, frozen, total_steps,
                 config.train.grad_accum_steps)


def count(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def nbytes(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))
