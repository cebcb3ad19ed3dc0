"""QLoRA: NF4 / int8 frozen kernels equal bitsandbytes' on the same tensors; a LoRA model on
the quantized base equals the same model on the dequantized base; training leaves the
quantized base bit-identical while LoRA learns."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

import lmx.hf
from experiments import tiny_synthetic
from lmx import config as config_lib, paths, quant
from lmx.scale import sharding
from lmx.train import build, loop

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes.functional")

# QLoRA paper (Dettmers et al. 2023), Appendix E, the NF4 data type, as printed.
PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
             0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_nf4_code_values_are_the_paper_table():
    np.testing.assert_array_equal(quant.NF4_CODE, np.float32(PAPER_NF4))
    np.testing.assert_array_equal(quant.NF4_CODE,
                                  bnb.get_4bit_type("nf4", device="cpu").numpy())


@pytest.mark.parametrize("shape", [(96, 200), (7, 45)])  # (7, 45): odd size, a partial block
def test_nf4_equals_bitsandbytes(shape):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.05
    w[0, :3] = [0.0, 1e-9, -0.3]  # a zero, a tiny value and a block maximum
    packed, state = bnb.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4")
    q = quant.nf4_quantize(jnp.asarray(w), 64)
    np.testing.assert_array_equal(np.asarray(q["codes"]), packed.numpy().reshape(-1))
    np.testing.assert_array_equal(np.asarray(q["absmax"]), state.absmax.numpy())
    np.testing.assert_array_equal(np.asarray(quant.nf4_dequantize(q, shape)),
                                  bnb.dequantize_4bit(packed, state).numpy())


def test_nf4_double_quantization_error_matches_bitsandbytes():
    """Double quantization (int8 scales here, bitsandbytes' 8-bit dynamic code there) adds
    almost nothing to NF4's error; bitsandbytes' own double-quantized error is the yardstick."""
    w = np.random.default_rng(1).standard_normal((256, 384)).astype(np.float32) * 0.05
    packed, state = bnb.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4",
                                      compress_statistics=True)
    bnb_error = np.abs(bnb.dequantize_4bit(packed, state).numpy() - w).mean()
    single = quant.nf4_quantize(jnp.asarray(w), 64)
    double = quant.nf4_quantize(jnp.asarray(w), 64, double=True)
    np.testing.assert_array_equal(np.asarray(double["codes"]), np.asarray(single["codes"]))
    error = np.abs(np.asarray(quant.nf4_dequantize(double, w.shape)) - w).mean()
    assert abs(error - bnb_error) < 0.002 * bnb_error, (error, bnb_error)
    absmax = np.asarray(single["absmax"])  # scales within half an int8 step of their block
    assert np.abs(np.asarray(quant.nf4_absmax(double)) - absmax).max() < np.ptp(absmax) / 127
    assert quant.kernel_nbytes(double) < 0.13 * w.nbytes < quant.kernel_nbytes(single)


def test_int8_equals_bitsandbytes_vectorwise():
    w_OI = np.random.default_rng(2).standard_normal((48, 80)).astype(np.float32)
    codes, absmax, _ = bnb.int8_vectorwise_quant(torch.from_numpy(w_OI))
    q = quant.int8_quantize(jnp.asarray(w_OI.T))  # lmx kernels are (I, O): channels are O
    np.testing.assert_array_equal(np.asarray(q["codes"]).T, codes.numpy())
    np.testing.assert_array_equal(np.asarray(q["absmax"]), absmax.numpy())
    np.testing.assert_array_equal(np.asarray(quant.int8_dequantize(q)).T,
                                  bnb.int8_vectorwise_dequant(codes, absmax).numpy())
    assert np.abs(np.asarray(quant.int8_dequantize(q)).T - w_OI).max() <= \
        absmax.numpy().max() / 254 * 1.0001


def _tiny_bert(folder):
    folder.mkdir()
    import transformers  # noqa: PLC0415  (a complete BERT config.json, nothing downloaded)
    hf_config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32).to_dict()
    (folder / "config.json").write_text(json.dumps(hf_config))
    module = lmx.hf.module_from_config(folder, task="sequence_classification", num_labels=2)
    inputs = lmx.hf.family_of_module(module).example_inputs(module)
    variables = nn.unbox(module.init(jax.random.key(0), *inputs))
    lmx.hf.save_pretrained(module, variables, folder)
    return folder


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_lora_on_quantized_base_equals_lora_on_dequantized_base(tmp_path, kind):
    config = tiny_synthetic.get_config("lora")
    config.model.pretrained = str(_tiny_bert(tmp_path / "bert"))
    config.peft.lora.targets = (r"params/layer_\d+/attention/(query|value)/kernel",)
    mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_for(config.sharding)
    plain = build.create(config, 2, mesh, rules, jax.random.key(0))
    config.model.quantize_base = kind
    quantized = build.create(config, 2, mesh, rules, jax.random.key(0))
    flat_q = traverse_util.flatten_dict(quantized.variables["params"], sep="/")
    scheme = quant.Scheme(kind)
    # every block linear kernel quantized from the checkpoint: HF's (O, I) weight as bnb does
    if kind == "nf4":
        hf_query = safetensors.numpy.load_file(tmp_path / "bert" / "model.safetensors")[
            "bert.encoder.layer.0.attention.self.query.weight"]
        packed, _ = bnb.quantize_4bit(torch.from_numpy(np.asarray(hf_query)), blocksize=64,
                                      quant_type="nf4")
        np.testing.assert_array_equal(
            np.asarray(flat_q["layer_0/attention/query/kernel/codes"]), packed.numpy().ravel())
    dequantized = {}
    for path, value in traverse_util.flatten_dict(plain.variables["params"], sep="/").items():
        if path.endswith("/kernel") and f"{path}/codes" in flat_q:
            stored = {k.rsplit("/", 1)[1]: v for k, v in flat_q.items()
                      if k.startswith(path + "/")}
            value = quant.dequantize_kernel(stored, value.shape, scheme)
        dequantized[path] = value
    assert len(dequantized) < len(flat_q)  # 12 kernels (6 per layer) each stored as 2 leaves
    # a LoRA that does something: B != 0
    peft = jax.tree.map(lambda x: x + 0.1, quantized.variables["peft"])
    ids = jax.random.randint(jax.random.key(1), (3, 16), 0, 64)
    out_q = quantized.module.apply({**quantized.variables, "peft": peft}, ids)
    out_d = plain.module.apply(
        {"params": traverse_util.unflatten_dict(dequantized, sep="/"), "peft": peft}, ids)
    out_plain = plain.module.apply({**plain.variables, "peft": peft}, ids)
    np.testing.assert_allclose(out_q, out_d, atol=1e-6, rtol=0)
    # ... and the base really is quantized: outputs and kernels move off the float ones
    assert np.abs(np.asarray(out_q) - np.asarray(out_plain)).max() > 1e-6
    kernel = "layer_0/mlp/up/kernel"
    error = np.abs(np.asarray(dequantized[kernel]) - np.asarray(
        traverse_util.flatten_dict(plain.variables["params"], sep="/")[kernel]))
    assert 0 < error.max() < 0.5 * np.abs(np.asarray(dequantized[kernel])).max()


def test_qlora_learns_and_quantized_base_stays_bit_identical(tmp_path):
    config = tiny_synthetic.get_config("lora")
    config.model.quantize_base, config.model.quantize_double = "nf4", True
    config.train.learning_rate = 3e-2
    trainer = loop.Trainer(config, str(tmp_path))
    frozen = paths.flatten(trainer.frozen)
    codes = [p for p in frozen if p.endswith("kernel/codes")]
    assert len(codes) == 12 and all(frozen[p].dtype == jnp.uint8 for p in codes)
    assert not any(p.endswith("/kernel") and "layer_" in p for p in frozen)
    before = {p: np.asarray(v) for p, v in frozen.items()}
    stream = trainer.train_stream(0)
    losses = []
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        for _ in range(60):
            trainer.state, metrics = trainer.train_step(trainer.state, trainer.frozen,
                                                        trainer.device_batch(next(stream)))
            losses.append(float(metrics["loss"]))
    # the plain-LoRA run of tests/test_training.py goes 0.696 -> 0.221 on this task
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2, losses
    after = paths.flatten(trainer.frozen)
    for path, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[path]), value, err_msg=path)


def test_quantized_base_config_errors():
    config = tiny_synthetic.get_config("full")
    config.model.quantize_base = "int8"
    config.model.quantize_double = True
    with pytest.raises(ValueError, match="quantize_double=True needs model.quantize_base='nf4'"):
        config_lib.validate(config, 1)
    config.model.quantize_double = False
    with pytest.raises(ValueError, match="peft.method='full' trains them"):
        config_lib.validate(config, 1)
