"""Per-area config checks `lmx.config.validate` runs, each a pure function of the flattened
config (`{"data.max_length": 64, ...}`) returning error strings that name their keys:
packing, per-host input, PEFT method settings, QLoRA, the mesh."""
from __future__ import annotations

from lmx import peft


def pack_errors(flat: dict) -> list[str]:
    if not flat["data.pack_length"]:
        return []
    if flat["model.task"] not in ("sequence_classification", "token_classification") or \
            flat["data.kind"] in ("images", "digits"):
        return [(f"config.data.pack_length={flat['data.pack_length']}: packing is for text "
                 f"sequence / token classification, not model.task={flat['model.task']!r} "
                 f"with data.kind={flat['data.kind']!r}")]
    if flat["data.pack_length"] < flat["data.max_length"]:
        return [(f"config.data.pack_length={flat['data.pack_length']} is shorter than "
                 f"data.max_length={flat['data.max_length']}: an example would not fit a row")]
    return []


def host_input_errors(flat: dict) -> list[str]:
    if not flat["data.host_input"]:
        return [f"config.data.token_cache={flat['data.token_cache']!r} is read only with "
                "data.host_input=True"] if flat["data.token_cache"] else []
    where = "config.data.host_input=True"
    if flat["model.task"] != "sequence_classification" or flat["data.kind"] != \
            "csv_classification":
        return [f"{where} is for text sequence classification (data.kind="
                f"'csv_classification'), not model.task={flat['model.task']!r} with "
                f"data.kind={flat['data.kind']!r}"]
    errors = [f"{where} needs {need}" for need, bad in (
        ("data.labels_file (the label set without reading every record)",
         not flat["data.labels_file"]),
        ("data.validation_file or data.validation_split (a carve reads every label)",
         not (flat["data.validation_file"] or flat["data.validation_split"])),
        ("data.pack_length=0 (packing reads every example of a step)",
         flat["data.pack_length"])) if bad]
    return errors


def peft_errors(flat: dict) -> list[str]:
    """Settings of the chosen PEFT method that cannot build a model."""
    method, errors = flat["peft.method"], []
    if method == "lora":
        if not flat["peft.lora.rank"] > 0:
            errors.append(f"config.peft.lora.rank={flat['peft.lora.rank']!r} must be > 0 for "
                          "peft.method='lora'")
        if not flat["peft.lora.alpha"] > 0:
            errors.append(f"config.peft.lora.alpha={flat['peft.lora.alpha']!r} must be > 0")
        if not 0 <= flat["peft.lora.dropout"] < 1:
            errors.append(f"config.peft.lora.dropout={flat['peft.lora.dropout']!r} must be in "
                          "[0, 1)")
        if not flat["peft.lora.targets"]:
            errors.append("config.peft.lora.targets is empty: LoRA needs target patterns")
        errors += lora_init_errors(flat)
        if not flat["peft.lora.plus_lr_ratio"] >= 0:
            errors.append(f"config.peft.lora.plus_lr_ratio={flat['peft.lora.plus_lr_ratio']!r} "
                          "must be >= 0 (0 = plain LoRA)")
    if method in ("houlsby", "pfeiffer") and not flat["peft.adapter_size"] > 0:
        errors.append(f"config.peft.adapter_size={flat['peft.adapter_size']!r} must be > 0 "
                      f"for peft.method={method!r}")
    if method in ("prompt", "prefix", "p_tuning") and not flat["peft.num_prompt_tokens"] > 0:
        errors.append(f"config.peft.num_prompt_tokens={flat['peft.num_prompt_tokens']!r} must "
                      f"be > 0 for peft.method={method!r}")
    errors += _encoder_errors(flat)
    if method == "ia3" and not (flat["peft.ia3.targets"] or flat["peft.ia3.feedforward"]):
        errors.append("config.peft.ia3.targets and config.peft.ia3.feedforward are both empty")
    for key in ("model.dropout_rate", "model.attention_dropout_rate"):
        if not 0 <= flat[key] < 1:
            errors.append(f"config.{key}={flat[key]!r} must be in [0, 1)")
    errors += quantize_errors(flat)
    if flat["model.scan_layers"] and any("layer_" in p for p in flat["peft.trainable"]):
        errors.append("config.peft.trainable names unrolled layers (layer_N) but "
                      "config.model.scan_layers=True stacks them under layers/block: write "
                      "the patterns for layers/block, or set scan_layers=False")
    return errors


def lora_init_errors(flat: dict) -> list[str]:
    """PiSSA / OLoRA settings that cannot build (lmx.peft_init.initial_lora)."""
    init = flat["peft.lora.init"]
    if init == "default":
        return []
    try:
        peft.check_lora_init(init, "config.peft.lora.init")
    except ValueError as e:
        return [str(e)]
    return [f"config.peft.lora.init={init!r} {why}" for why, bad in (
        ("with peft.lora.dora=True is not built (DoRA's magnitude of a residual base)",
         flat["peft.lora.dora"]),
        ("needs model.quantize_base='none' (it decomposes float kernels)",
         flat["model.quantize_base"] != "none"),
        ("needs model.scan_layers=False (it decomposes each layer's own kernel)",
         flat["model.scan_layers"])) if bad]


def _encoder_errors(flat: dict) -> list[str]:
    """The p_tuning / prefix-projection keys set where nothing reads them."""
    method, errors = flat["peft.method"], []
    if flat["peft.prefix_projection"] and method != "prefix":
        errors.append(f"config.peft.prefix_projection=True applies to peft.method 'prefix', "
                      f"not {method!r}")
    if flat["peft.prefix_projection"] and flat["model.scan_layers"]:
        errors.append("config.peft.prefix_projection=True needs config.model.scan_layers=False")
    encoded = method == "p_tuning" or (method == "prefix" and flat["peft.prefix_projection"])
    if flat["peft.encoder_hidden_size"] and not encoded:
        errors.append(f"config.peft.encoder_hidden_size={flat['peft.encoder_hidden_size']!r} "
                      "is read by peft.method 'p_tuning' or 'prefix' with prefix_projection=True "
                      f"only, not {method!r}")
    return errors


def family_errors(flat: dict, family) -> list[str]:
    """PEFT the model family cannot build (`lmx.models.families.Family.refuses`)."""
    errors = []
    if flat["peft.method"] in family.refuses:
        errors.append(f"config.peft.method={flat['peft.method']!r} is not built for "
                      f"model.family={family.name!r}: {family.refuses[flat['peft.method']]}")
    if flat["model.quantize_base"] != "none" and "quantize_base" in family.refuses:
        errors.append(f"config.model.quantize_base={flat['model.quantize_base']!r} is not built "
                      f"for model.family={family.name!r}: {family.refuses['quantize_base']}")
    return errors


def quantize_errors(flat: dict) -> list[str]:
    """QLoRA settings that cannot build: a quantized kernel must stay frozen and unscanned."""
    kind, errors = flat["model.quantize_base"], []
    if kind == "none":
        if flat["model.quantize_double"]:
            errors.append("config.model.quantize_double=True needs model.quantize_base='nf4'")
        return errors
    if flat["model.quantize_double"] and kind != "nf4":
        errors.append(f"config.model.quantize_double=True needs model.quantize_base='nf4', "
                      f"not {kind!r}")
    if flat["peft.method"] == "full":
        errors.append(f"config.model.quantize_base={kind!r} freezes the linear kernels in a "
                      "quantized store, but config.peft.method='full' trains them")
    if flat["model.scan_layers"]:
        errors.append(f"config.model.quantize_base={kind!r} needs model.scan_layers=False")
    if flat["peft.lora.dora"]:
        errors.append(f"config.model.quantize_base={kind!r} with peft.lora.dora=True: DoRA's "
                      "magnitude is computed from float kernels (not built for a quantized base)")
    return errors


def mesh_errors(flat: dict, num_devices: int) -> list[str]:
    from lmx.scale import sharding  # noqa: PLC0415
    try:
        sizes = sharding.mesh_sizes(flat["mesh"], num_devices)
    except ValueError as e:
        return [str(e)]
    if flat["sharding"] not in sharding.RULE_PRESETS:
        return []
    ways = sharding.batch_ways(sizes, sharding.RULE_PRESETS[flat["sharding"]])
    errors = [f"config.train.{k}={flat['train.' + k]} is not divisible by the {ways}-way "
              f"data-parallel split of mesh {sizes}"
              for k in ("batch_size", "eval_batch_size") if flat["train." + k] % ways]
    accum = flat["train.grad_accum_steps"]
    if not errors and accum > 0 and flat["train.batch_size"] % (accum * ways):
        errors.append(f"config.train.batch_size={flat['train.batch_size']} is not divisible "
                      f"by train.grad_accum_steps={accum} micro-batches x the {ways}-way "
                      f"data-parallel split of mesh {sizes}")
    return errors
