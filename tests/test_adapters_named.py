"""Named adapters saved by lmx in PEFT's multi-adapter layout load in peft 0.21 with
`load_adapter(..., adapter_name=)`; PEFT's mixed-batch inference (`adapter_names=`) equals
lmx's mixed forward on the same adapters and inputs (<= 1e-5); lmx reads them back exactly."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from test_hf_models import batch, reference

import lmx.hf
from lmx.adapters import mixed
from lmx.hf import named
from lmx.peft import PeftSpec
from lmx.train.mixed import mixed_forward

TOL = 1e-5


def layers(modules):
    return frozenset(f"layer_{i}/{m}" for i in range(2) for m in modules)


SPECS = {"sst": PeftSpec(lora_rank=4, lora_alpha=8.0, lora_targets=layers(
             ["attention/query", "attention/value"])),
         "news": PeftSpec(lora_rank=2, lora_alpha=2.0, lora_rslora=True, lora_targets=layers(
             ["attention/value", "mlp/down"]))}


def test_named_adapters_round_trip_through_peft(tmp_path):
    reference("bert", "sequence_classification", tmp_path / "base")
    base_module, variables = lmx.hf.from_pretrained(tmp_path / "base")
    ids_BT, mask_BT, types_BT = batch("bert")
    adapters = {}
    for i, (name, spec) in enumerate(SPECS.items()):
        init = nn.unbox(base_module.clone(peft=spec).init(jax.random.key(i), ids_BT))
        keys = iter(jax.random.split(jax.random.key(10 + i), 50))
        trained = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(next(keys), x.shape),
                               {"peft": init["peft"], "params": {"head": init["params"]["head"]}})
        adapters[name] = mixed.from_variables(spec, trained)
        named.save(base_module, adapters[name], tmp_path / "adapters", name)
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["news", "sst"]

    base = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    model = peft.PeftModel.from_pretrained(base.eval(), tmp_path / "adapters" / "sst",
                                           adapter_name="sst")
    model.load_adapter(tmp_path / "adapters" / "news", adapter_name="news")
    model.eval()
    rows = ["news", "sst", "news"]
    kwargs = dict(input_ids=torch.tensor(ids_BT, dtype=torch.long),
                  attention_mask=torch.tensor(mask_BT, dtype=torch.long),
                  token_type_ids=torch.tensor(types_BT, dtype=torch.long))
    with torch.no_grad():
        expected = model(**kwargs, adapter_names=rows).logits.numpy()

    spec_mixed, stacked = mixed.stack(adapters)
    frozen = {"params": {k: v for k, v in variables["params"].items() if k != "head"}}
    lmx_batch = {"ids": ids_BT, "mask": mask_BT, "token_types": types_BT,
                 "adapter_ids": jnp.array([spec_mixed.index(r) for r in rows])}
    model_mixed = base_module.clone(peft=spec_mixed.spec)
    actual = mixed_forward(model_mixed, spec_mixed, {**frozen, "peft": stacked}, lmx_batch)
    error = float(np.abs(expected - np.asarray(actual)).max())
    print(f"PEFT adapter_names= vs lmx mixed forward: max abs error {error:.2e}")
    assert error <= TOL

    for name in SPECS:  # read back by name: the same spec and tensors
        _, base_vars, loaded = named.load(tmp_path / "base", tmp_path / "adapters", name)
        assert loaded.spec == adapters[name].spec
        assert "head" not in base_vars["params"] and "peft" not in base_vars
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-7),
                     loaded.peft, adapters[name].peft)
    with pytest.raises(FileNotFoundError, match="no adapter named 'nope'.*news"):
        named.load(tmp_path / "base", tmp_path / "adapters", "nope")
