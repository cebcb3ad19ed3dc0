"""PEFT adapters in and out of lmx, checked against peft.PeftModel; LoRA merge / unmerge."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import traverse_util
from test_hf_models import DECODERS, HEADS, batch, hf_outputs, max_error, reference

import lmx.hf
from lmx import peft as peft_lib
from lmx.hf import adapters

TOL = 1e-5
P = 3  # virtual tokens
TASK_TYPES = {"sequence_classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM",
              "token_classification": "TOKEN_CLS"}


def peft_config(method, family, task):
    task_type = TASK_TYPES[task]
    if method == "lora":
        targets = {"bert": ["query", "value"], "gpt2": ["c_proj"]}.get(
            family, ["q_proj", "v_proj", "down_proj"])  # llama and the open decoders
        return peft.LoraConfig(task_type=task_type, r=4, lora_alpha=8, target_modules=targets,
                               use_rslora=family == "llama")
    if method == "ia3":
        targets, ff = {"bert": (["key", "value", "output.dense"], ["output.dense"]),
                       "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
                       "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"])}[family]
        return peft.IA3Config(task_type=task_type, target_modules=targets,
                              feedforward_modules=ff)
    if method == "prompt":
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=P)
    return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=P)


def peft_reference(method, family, task, folder):
    base = reference(family, task, folder / "base")
    torch.manual_seed(7)
    model = peft.get_peft_model(base, peft_config(method, family, task)).eval()
    with torch.no_grad():  # non-trivial adapter weights (LoRA B is 0 and IA3 is 1 at init)
        for name, param in model.named_parameters():
            if any(k in name for k in ("lora_", "ia3_", "prompt", "modules_to_save")):
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(folder / "adapter")
    return model


def compare(method, family, task, hf_model, model, variables):
    ids_BT, mask_BT, types_BT = batch(family)
    expected = hf_outputs(hf_model, task, ids_BT, mask_BT, types_BT)
    if method == "prompt" and task != "sequence_classification":
        expected = expected[:, P:]  # PEFT returns the virtual tokens' positions too
    actual = np.asarray(model.apply(variables, ids_BT, mask_BT, types_BT))
    return max_error(expected, actual, mask_BT, task)


CASES = [("lora", "bert", "sequence_classification"), ("lora", "gpt2", "causal_lm"),
         ("lora", "llama", "causal_lm"), ("ia3", "bert", "sequence_classification"),
         ("ia3", "gpt2", "causal_lm"), ("ia3", "llama", "token_classification"),
         ("prompt", "bert", "sequence_classification"), ("prompt", "gpt2", "causal_lm"),
         ("prefix", "gpt2", "causal_lm"), ("prefix", "llama", "causal_lm")]
CASES += [("lora", family, "causal_lm") for family in DECODERS]


@pytest.mark.parametrize("method,family,task", CASES)
def test_peft_adapter_loads_with_equal_outputs_and_round_trips(method, family, task, tmp_path):
    hf_model = peft_reference(method, family, task, tmp_path)
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    error = compare(method, family, task, hf_model, model, variables)
    print(f"{method:7s} {family:6s} {task:24s} max abs error {error:.2e}")
    assert error <= TOL

    # lmx -> PEFT -> lmx is exact, and PEFT loads lmx's folder to the same outputs
    trained = {"peft": variables["peft"], "params": {"head": variables["params"]["head"]}} \
        if "classifier" in str(traverse_util.flatten_dict(variables["params"].get("head", {}))) \
        else {"peft": variables["peft"]}
    assert round_trip(method, family, task, model, variables, trained, tmp_path) <= TOL


def round_trip(method, family, task, model, variables, trained, tmp_path) -> float:
    """Saves `trained` as a PEFT folder: lmx -> PEFT -> lmx must be exact; returns the max abs
    error of PEFT's outputs with that folder loaded (tmp_path/base is the HF base)."""
    lmx.hf.save_adapter(model, trained, tmp_path / "again")
    model2, variables2 = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "again")
    assert model2.peft == model.peft
    flat, flat2 = (traverse_util.flatten_dict(v) for v in (variables, variables2))
    assert flat.keys() == flat2.keys()
    for key in flat:
        np.testing.assert_array_equal(flat[key], flat2[key], err_msg=str(key))
    base = HEADS[task].from_pretrained(tmp_path / "base").eval()
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "again").eval()
    return compare(method, family, task, reloaded, model, variables)


def _trained_lora(tmp_path, task="sequence_classification"):
    """An lmx LoRA on a HF BERT, after 5 SGD steps (B no longer 0)."""
    reference("bert", task, tmp_path / "base")
    base_module, base_variables = lmx.hf.from_pretrained(tmp_path / "base")
    spec = peft_lib.PeftSpec(lora_rank=4, lora_alpha=8.0, lora_targets=frozenset(
        f"layer_{i}/attention/{m}" for i in range(2) for m in ("query", "value")))
    module = base_module.clone(peft=spec)
    ids_BT, mask_BT, types_BT = batch("bert")
    peft_vars = nn.unbox(module.init(jax.random.key(3), ids_BT))["peft"]
    trained = {"peft": peft_vars, "params": {"head": base_variables["params"]["head"]}}

    def loss(trained):
        variables = {"params": {**base_variables["params"], **trained["params"]},
                     "peft": trained["peft"]}
        return jnp.square(module.apply(variables, ids_BT, mask_BT, types_BT)).mean()

    for _ in range(5):
        grads = jax.grad(loss)(trained)
        trained = jax.tree.map(lambda w, g: w - 0.5 * g, trained, grads)
    variables = {"params": {**base_variables["params"], **trained["params"]},
                 "peft": trained["peft"]}
    return module, variables, trained


def test_lmx_trained_lora_loads_in_peft(tmp_path):
    module, variables, trained = _trained_lora(tmp_path)
    assert np.abs(trained["peft"]["layer_0"]["attention"]["query"]["lora_b"]).max() > 0
    lmx.hf.save_adapter(module, trained, tmp_path / "adapter")
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    hf_model = peft.PeftModel.from_pretrained(base.eval(), tmp_path / "adapter").eval()
    error = compare("lora", "bert", "sequence_classification", hf_model, module, variables)
    print(f"lmx-trained LoRA in PEFT: max abs error {error:.2e}")
    assert error <= TOL


def test_merged_lora_equals_unmerged_and_saves_for_transformers(tmp_path):
    module, variables, _ = _trained_lora(tmp_path)
    ids_BT, mask_BT, types_BT = batch("bert")
    unmerged = np.asarray(module.apply(variables, ids_BT, mask_BT, types_BT))
    merged_vars, merged_spec = peft_lib.merge_lora(variables, module.peft)
    merged_module = module.clone(peft=merged_spec)
    merged = np.asarray(merged_module.apply(merged_vars, ids_BT, mask_BT, types_BT))
    assert np.abs(merged - unmerged).max() <= TOL
    lmx.hf.save_pretrained(merged_module, merged_vars, tmp_path / "merged")
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "merged").eval()
    assert np.abs(hf_outputs(hf_model, "sequence_classification", ids_BT, mask_BT, types_BT)
                  - unmerged).max() <= TOL
    restored = peft_lib.unmerge_lora(merged_vars, variables, module.peft)
    for key, value in traverse_util.flatten_dict(variables["params"]).items():
        np.testing.assert_allclose(traverse_util.flatten_dict(restored["params"])[key], value,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="peft"):
        lmx.hf.save_pretrained(module, variables, tmp_path / "refused")


def test_bottleneck_adapters_round_trip_in_lmx_format(tmp_path):
    reference("bert", "sequence_classification", tmp_path / "base")
    base_module, base_variables = lmx.hf.from_pretrained(tmp_path / "base")
    module = base_module.clone(peft=peft_lib.PeftSpec(adapter="houlsby", adapter_size=4))
    ids_BT, mask_BT, types_BT = batch("bert")
    peft_vars = jax.tree.map(lambda x: x + 0.1,
                             nn.unbox(module.init(jax.random.key(1), ids_BT))["peft"])
    variables = {**base_variables, "peft": peft_vars}
    lmx.hf.save_adapter(module, {"peft": peft_vars}, tmp_path / "adapter")
    assert (tmp_path / "adapter" / adapters.LMX_CONFIG).is_file()
    model2, variables2 = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    assert model2.peft == module.peft
    np.testing.assert_array_equal(module.apply(variables, ids_BT, mask_BT, types_BT),
                                  model2.apply(variables2, ids_BT, mask_BT, types_BT))


def test_unsupported_peft_options_are_named(tmp_path):
    peft_reference("lora", "bert", "sequence_classification", tmp_path)
    config_path = tmp_path / "adapter" / adapters.PEFT_CONFIG
    config_path.write_text(config_path.read_text().replace('"lora_bias": false',
                                                           '"lora_bias": true'))
    with pytest.raises(ValueError, match="lora_bias"):
        lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
