"""Bad input -> the error a user sees (the README's fault table, one test per row): each error
names the file, line, key or step, and a failed checkpoint save loses nothing committed."""
import errno
import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from orbax.checkpoint._src.handlers import json_checkpoint_handler
from test_checkpoint import _saved, _state
from test_tasks import WORDS, _base, _tiny_bert_folder

import lmx.hf
from lmx import peft as peft_lib, tasks
from lmx.hf import adapters, core as hf_core
from lmx.models import transformer
from lmx.train import checkpoint, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = {"base": "b", "base_sha256": "0" * 64}


@pytest.mark.parametrize("how", ["truncated", "corrupt_header"])
def test_damaged_safetensors_names_the_file(tmp_path, how):
    folder = _tiny_bert_folder(tmp_path / "bert")
    weights = os.path.join(folder, "model.safetensors")
    blob = open(weights, "rb").read()
    open(weights, "wb").write(blob[:len(blob) // 2] if how == "truncated" else
                              b"\x10\x00" + blob[2:])  # header length 16: cuts the JSON
    with pytest.raises(ValueError, match=re.escape(weights) + " is not a readable safetensors"):
        lmx.hf.from_pretrained(folder, task="hidden")


def test_tokenizer_json_cut_in_half_names_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")
                         ).save(str(path))
    lmx.hf.load_tokenizer(tmp_path, pad_token="[UNK]")  # whole, it loads
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a readable tokenizer"):
        lmx.hf.load_tokenizer(tmp_path, pad_token="[UNK]")


def test_resuming_with_another_base_names_the_checkpoint_and_both_bases(tmp_path):
    c = _base(tmp_path, kind="csv_classification", train_file=_csv(tmp_path / "t.csv", "ab"),
              max_length=8)
    c.model.pretrained = _tiny_bert_folder(tmp_path / "bert")
    c.train.num_steps = 1
    loop.run(c, str(tmp_path / "run"))
    other = tmp_path / "bert"
    weights = other / "model.safetensors"
    tensors = hf_core.read_tensors(other)
    hf_core.write_tensors({k: v + 1.0 for k, v in tensors.items()}, weights)  # same shapes
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoints/1 belongs to base_sha256="
                                         r"'[0-9a-f]{64}', not '[0-9a-f]{64}': refusing"):
        loop.run(c, str(tmp_path / "run"))


def _bert_folder(folder, **sizes):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    module = transformer.Transformer(transformer.size("bert-tiny", vocab_size=len(vocab),
                                                      **sizes), task="hidden")
    variables = nn.unbox(module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
    lmx.hf.save_pretrained(module, jax.tree.map(np.asarray, dict(variables)), folder)
    return folder


@pytest.mark.parametrize("other, message", [
    ({"embed_dim": 48, "head_dim": 12}, (r" does not fit the model: unknown or mis-shaped "
                                         r"\['peft/layer_0/attention/query/lora_a: \(32, 4\) vs "
                                         r"\(48, 4\)")),
    ({"num_layers": 1}, (r": tensors lmx cannot place: \['encoder\.layer\.1\.attention\.self"
                         r"\.query\.lora_A\.weight'")),
    ({"num_layers": 3}, (r" does not fit the model \(an adapter for another base\?\): its "
                         r"adapter_config\.json targets modules it holds no tensors for: "
                         r"\['encoder\.layer\.2\.attention\.self\.query\.lora_A\.weight'")),
], ids=["wider", "shallower", "deeper"])
def test_peft_adapter_folder_for_another_base_names_the_folder_and_the_key(tmp_path, other,
                                                                           message):
    """A HF PEFT LoRA folder saved on a 2-layer, 32-wide bert-tiny, loaded onto another base
    with lmx.hf (target_modules by suffix, as PEFT users write them: the deeper base's third
    layer matches, and the folder has no tensor for it)."""
    module, _ = lmx.hf.from_pretrained(_bert_folder(tmp_path / "base"), task="hidden")
    module = module.clone(peft=peft_lib.PeftSpec(lora_rank=4, lora_alpha=8.0, lora_targets=(
        frozenset(f"layer_{i}/attention/{m}" for i in range(2) for m in ("query", "value")))))
    peft_vars = nn.unbox(module.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32)))["peft"]
    adapter = tmp_path / "adapter"
    lmx.hf.save_adapter(module, {"peft": peft_vars}, adapter)
    config = adapter / adapters.PEFT_CONFIG
    saved = json.loads(config.read_text())
    assert len(saved["target_modules"]) == 4  # layers 0 and 1, by full name
    config.write_text(json.dumps({**saved, "target_modules": ["query", "value"]}))
    lmx.hf.from_pretrained(tmp_path / "base", task="hidden", adapter=adapter)  # its own base
    with pytest.raises(ValueError, match=re.escape(str(adapter)) + message):
        lmx.hf.from_pretrained(_bert_folder(tmp_path / "other", **other), task="hidden",
                               adapter=adapter)


def test_config_override_of_the_wrong_type_names_the_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmx.main", "--config", "experiments/tiny_synthetic.py:runlocal",
         "--workdir", str(tmp_path), "--config.train.learning_rate=abc"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert ("flag --config.train.learning_rate=abc: could not convert string to float: 'abc'"
            in proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not os.listdir(tmp_path)  # nothing started


def _csv(path, labels):
    path.write_text("text,category\n" + "".join(f"alice met bob {i},{label}\n"
                                             for i, label in enumerate(labels * 8)))
    return str(path)


def test_validation_label_missing_from_train_names_file_and_line(tmp_path):
    c = _base(tmp_path, kind="csv_classification", train_file=_csv(tmp_path / "t.csv", "ab"),
              validation_file=_csv(tmp_path / "v.csv", "abc"), max_length=8)
    c.model.pretrained = _tiny_bert_folder(tmp_path / "bert")
    # v.csv line 4 (after the header and a, b) holds the first 'c', a class train lacks
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'v.csv'}:4: labels not in "
                                                   "the label set: ['c']")):
        tasks.get(c).load(c, str(tmp_path / "run"))


def test_full_disk_during_a_save_names_the_step_and_keeps_the_last_checkpoint(tmp_path,
                                                                             monkeypatch):
    mgr = _saved(tmp_path, steps=(1,))
    real_save = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def disk_full(self, x, directory):  # orbax's write of the meta item, mid-save
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
    with pytest.raises(OSError, match=r"saving checkpoint step 2 in .*checkpoints failed \(No "
                                      r"space left on device: .*\); the run stopped; the last "
                                      r"committed checkpoint, step 1, is intact") as info:
        mgr.save(_state(2), META)
        mgr.wait_until_finished()
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", real_save)
    restored = checkpoint.restore(checkpoint.manager(str(tmp_path), 5), _state(0), META)
    assert int(restored.step) == 1
    np.testing.assert_array_equal(restored.trainable["params"]["w"], np.full((64, 8), 1.0))
