"""LN tuning, P-tuning and prefix tuning with projection against HF PEFT 0.21 (import and
export within 1e-5 on BERT and Llama; P-tuning's LSTM encoder on BERT), their learning on
planted data, and their refusals."""
import json

import numpy as np
import peft
import pytest
import torch
from flax import traverse_util
from test_hf_adapters import TASK_TYPES, compare, round_trip
from test_hf_models import HEADS, reference

import lmx.hf
from lmx import config as config_lib, paths, peft as peft_lib
from lmx.models import prompt_encoders

TOL = 1e-5
P, HIDDEN = 3, 16  # virtual tokens, encoder_hidden_size


def _peft_model(config, family, task, folder, perturb=("ln_tuning", "modules_to_save")):
    """A PEFT model over tiny reference weights, `perturb`ed parameters moved off their init
    (LN tuning's copies start equal to the base norms), saved to folder / "adapter"."""
    base = reference(family, task, folder / "base")
    torch.manual_seed(7)
    model = peft.get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in perturb):
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(folder / "adapter")
    return model


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


LN_CASES = [("bert", "sequence_classification", ["LayerNorm"]), ("llama", "causal_lm", None)]


@pytest.mark.parametrize("family,task,targets", LN_CASES)
def test_ln_tuning_loads_from_peft_and_exports_back(family, task, targets, tmp_path):
    config = peft.LNTuningConfig(task_type=TASK_TYPES[task], target_modules=targets)
    hf_model = _peft_model(config, family, task, tmp_path)
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    assert model.peft == peft_lib.PeftSpec(ln_tuning=True)
    error = compare("ln", family, task, hf_model, model, variables)
    print(f"ln_tuning {family}: PEFT -> lmx max abs error {error:.2e}")
    assert error <= TOL

    # the trained part is every norm (+ the classifier): lmx -> PEFT -> lmx exact, PEFT equal
    flat = _flat({"params": variables["params"]})
    norms = paths.select({"params": variables["params"]}, (peft_lib.ALL_NORMS,), what="norms")
    trained = [p for p in flat if p in norms or p.startswith("params/head/classifier")]
    assert len(norms) == {"bert": 10, "llama": 5}[family]
    part = traverse_util.unflatten_dict({p: flat[p] for p in trained}, sep="/")
    error = round_trip("ln", family, task, model, variables, part, tmp_path)
    print(f"ln_tuning {family}: lmx -> PEFT max abs error {error:.2e}")
    assert error <= TOL


def _encoder_from_torch(encoder: torch.nn.Module, layers: dict[str, str]) -> dict:
    """lmx `peft` leaves of a PEFT prompt encoder (torch Linear weights are (O, I))."""
    state = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    out = {"embedding": state["embedding.weight"]}
    for lmx_name, torch_name in layers.items():
        out[f"{lmx_name}_kernel"] = state[f"{torch_name}.weight"].T
        out[f"{lmx_name}_bias"] = state[f"{torch_name}.bias"]
    return out


def _check_encoder_method(hf_model, model, variables, spec, encoder, where, family, task,
                          tmp_path):
    """lmx with PEFT's encoder weights equals PEFT (training mode); its export loads in PEFT
    and in lmx (as the computed table) to the same outputs."""
    kind = "prompt" if spec.prompt_encoder else "prefix"  # PEFT's outputs hold prompt slots
    peft_vars = traverse_util.unflatten_dict(
        {f"{where}/{k}": v for k, v in encoder.items()}, sep="/")
    module = model.clone(peft=spec)
    base_params = variables["params"]
    encoded = {"params": base_params, "peft": peft_vars}
    error = compare(kind, family, task, hf_model, module, encoded)
    print(f"{spec.prompt_encoder or 'prefix projection'} {family}: lmx encoder vs PEFT {error:.2e}")
    assert error <= TOL

    head = base_params.get("head", {})
    trained = {"peft": peft_vars, **({"params": {"head": head}} if "classifier" in head else {})}
    lmx.hf.save_adapter(module, trained, tmp_path / "again")
    again = peft.PeftModel.from_pretrained(HEADS[task].from_pretrained(tmp_path / "base").eval(),
                                           tmp_path / "again").eval()
    error = compare(kind, family, task, again, module, encoded)
    print(f"{spec.prompt_encoder or 'prefix projection'} {family}: lmx -> PEFT {error:.2e}")
    assert error <= TOL
    model2, variables2 = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "again")
    assert not (model2.peft.prompt_encoder or model2.peft.prefix_projection)  # the table only
    reloaded = np.asarray(model2.apply(variables2, *_batch(family)))
    assert np.abs(reloaded - np.asarray(module.apply(encoded, *_batch(family)))).max() <= TOL


def _batch(family):
    from test_hf_models import batch
    return batch(family)


def _lstm_encoder_from_torch(encoder: torch.nn.Module) -> dict:
    """lmx `peft` leaves of PEFT's LSTM prompt encoder: per layer and direction the input
    and recurrent kernels (transposed) and bias_ih + bias_hh; the head's two Linears."""
    state = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    out = _encoder_from_torch(encoder, {"head_0": "mlp_head.0", "head_1": "mlp_head.2"})
    for layer in range(encoder.lstm_head.num_layers):
        for direction, suffix in (("forward", ""), ("reverse", "_reverse")):
            name, torch_name = f"lstm_{layer}_{direction}", f"l{layer}{suffix}"
            out[f"{name}_kernel"] = state[f"lstm_head.weight_ih_{torch_name}"].T
            out[f"{name}_recurrent"] = state[f"lstm_head.weight_hh_{torch_name}"].T
            out[f"{name}_bias"] = (state[f"lstm_head.bias_ih_{torch_name}"]
                                   + state[f"lstm_head.bias_hh_{torch_name}"])
    return out


P_TUNING_CASES = [("bert", "sequence_classification", "mlp"), ("llama", "causal_lm", "mlp"),
                  ("bert", "sequence_classification", "lstm")]


@pytest.mark.parametrize("family,task,kind", P_TUNING_CASES)
def test_p_tuning_equals_peft_encoder_imports_and_exports(family, task, kind, tmp_path):
    config = peft.PromptEncoderConfig(task_type=TASK_TYPES[task], num_virtual_tokens=P,
                                      encoder_hidden_size=HIDDEN,
                                      encoder_reparameterization_type=kind.upper())
    hf_model = _peft_model(config, family, task, tmp_path, perturb=("modules_to_save",))
    # PEFT saves the encoder's output: lmx loads it as a soft prompt (PEFT reloads it so too)
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    assert model.peft.num_prompt_tokens == P and not model.peft.prompt_encoder
    error = compare("prompt", family, task, hf_model, model, variables)
    print(f"p_tuning {kind} {family}: PEFT folder -> lmx {error:.2e}")
    assert error <= TOL

    spec = peft_lib.PeftSpec(num_prompt_tokens=P, prompt_encoder=kind,
                             encoder_hidden_size=HIDDEN, prompt_in_pooling=True)
    torch_encoder = hf_model.prompt_encoder["default"]
    encoder = (_lstm_encoder_from_torch(torch_encoder) if kind == "lstm" else
               _encoder_from_torch(torch_encoder, {"mlp_0": "mlp_head.0", "mlp_1": "mlp_head.2",
                                                   "mlp_2": "mlp_head.4"}))
    # lmx's soft prompt from these weights is PEFT's encoder output
    prompt_PD = prompt_encoders.soft_prompt(
        prompt_encoders.encoder_weights({f"e/{k}": v for k, v in encoder.items()}, "e"))
    with torch.no_grad():
        expected_PD = torch_encoder(torch.arange(P)[None])[0].numpy()
    error = np.abs(np.asarray(prompt_PD) - expected_PD).max()
    print(f"p_tuning {kind} {family}: soft prompt vs PEFT's prompt_encoder {error:.2e}")
    assert error <= TOL
    base = {"params": variables["params"]}
    _check_encoder_method(hf_model, model, base, spec, encoder, "embed/prompt_encoder", family,
                          task, tmp_path)
    saved = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert saved["encoder_reparameterization_type"] == kind.upper()


def test_prefix_projection_equals_peft_imports_and_exports(tmp_path):
    family, task = "llama", "causal_lm"  # grouped-query: the prefix is G * K wide per layer
    config = peft.PrefixTuningConfig(task_type=TASK_TYPES[task], num_virtual_tokens=P,
                                     prefix_projection=True, encoder_hidden_size=HIDDEN)
    hf_model = _peft_model(config, family, task, tmp_path, perturb=())
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    assert model.peft.num_prefix_tokens == P and not model.peft.prefix_projection
    error = compare("prefix", family, task, hf_model, model, variables)
    print(f"prefix projection {family}: PEFT folder -> lmx {error:.2e}")
    assert error <= TOL

    spec = peft_lib.PeftSpec(num_prefix_tokens=P, prefix_projection=True,
                             encoder_hidden_size=HIDDEN)
    encoder = _encoder_from_torch(hf_model.prompt_encoder["default"],
                                  {"transform_0": "transform.0", "transform_1": "transform.2"})
    _check_encoder_method(hf_model, model, {"params": variables["params"]}, spec, encoder,
                          "prefix_encoder", family, task, tmp_path)


REFUSALS = [
    (dict(method="lora", prefix_projection=True), "config.peft.prefix_projection=True applies"),
    (dict(method="prompt", encoder_hidden_size=8), "config.peft.encoder_hidden_size=8 is read"),
    (dict(method="p_tuning", prompt_encoder="gru"), "config.peft.prompt_encoder='gru'"),
    (dict(method="prefix", prefix_projection=True, scan_layers=True),
     "config.peft.prefix_projection=True needs config.model.scan_layers=False"),
]


@pytest.mark.parametrize("overrides,message", REFUSALS)
def test_bad_settings_are_refused_naming_the_key(overrides, message):
    c = config_lib.base_config()
    c.model.scan_layers = overrides.pop("scan_layers", False)
    for key, value in overrides.items():
        c.peft[key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config_lib.validate(c, 1)


IMAGE_REFUSALS = [
    ("resnet", peft_lib.PeftSpec(ln_tuning=True), "'ln_tuning' does not apply to a ResNet"),
    ("resnet", peft_lib.PeftSpec(num_prompt_tokens=2, prompt_encoder="mlp"),
     "'prompt / p_tuning' does not apply to a ResNet"),
    ("vit", peft_lib.PeftSpec(num_prompt_tokens=2, prompt_encoder="mlp"), "'p_tuning'"),
    ("vit", peft_lib.PeftSpec(num_prefix_tokens=2, prefix_projection=True),
     "prefix_projection=True"),
]


@pytest.mark.parametrize("family,spec,message", IMAGE_REFUSALS)
def test_image_families_refuse_what_they_cannot_build(family, spec, message):
    import jax
    import jax.numpy as jnp

    from lmx.models import families
    fam = families.get(family)
    module = fam.make(fam.size(f"{family}-tiny"), "sequence_classification", 3, "cls", spec)
    size = getattr(module.cfg, "image_size", 32)
    with pytest.raises(ValueError, match=message):
        module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_generation_with_projected_prefix_equals_full_recomputation(tmp_path):
    """The projection feeds every decoding step's prefix: 12 cached greedy tokens equal
    recomputing the whole sequence at each step."""
    import flax.linen as nn
    import jax
    from test_generate import _check_cache
    reference("llama", "causal_lm", tmp_path / "base")
    model, variables = lmx.hf.from_pretrained(tmp_path / "base")
    module = model.clone(peft=peft_lib.PeftSpec(num_prefix_tokens=P, prefix_projection=True,
                                                encoder_hidden_size=HIDDEN))
    peft_vars = nn.unbox(module.init(jax.random.key(1), *_batch("llama")[:2]))["peft"]
    _check_cache(module, {"params": variables["params"], "peft": peft_vars})
