"""Chat SFT: the conversation reader, loss spans found through the chat template, whole-
conversation packing (packed loss == unpacked loss, no attention across conversations), and
experiments/banking77_chat.py's runlocal learning planted answers end to end."""
import csv
import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from lmx.data import batching, readers, tokenizer as tokenizer_lib
from lmx.data.chat import ChatFormat
from lmx.data.transforms import IGNORE
from lmx.hf import chat_template, tokenizer as hf_tokenizer
from lmx.models import transformer
from lmx.tasks.chat import CHATML_SPECIALS
from lmx.train import loop
from lmx.train.step import classification_loss, forward

REPO = pathlib.Path(__file__).resolve().parents[1]
SYSTEM = {"role": "system", "content": "Name the intent."}


def _folder(path, template):
    with open(REPO / "data/banking77/train.csv", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:1500]
    return tokenizer_lib.train_byte_bpe(
        texts, 500, str(path), specials=CHATML_SPECIALS,
        config={"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>"}, chat_template=template)


@pytest.fixture(scope="module")
def chat_format(tmp_path_factory):
    folder = _folder(tmp_path_factory.mktemp("qwen"),
                     (REPO / "tests/testdata/chat_templates/qwen2.5.jinja").read_text())
    return ChatFormat(hf_tokenizer.load_tokenizer(folder), chat_template.load_chat_template(folder),
                      chat_template.special_tokens(folder))


def _conversation(k: int) -> list[dict]:
    turns = [SYSTEM]
    for t in range(1 + k % 3):
        turns += [{"role": "user", "content": f"my card {k} has not arrived after {t} weeks"},
                  {"role": "assistant", "content": f"card_arrival {k * t}"}]
    return turns


def test_reader_errors_name_file_and_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "greeting"}]})
    for bad, message in [
        ("{not json", "expected a JSON object"),
        (json.dumps({"messages": [{"role": "bot", "content": "x"}]}), "role 'bot' is not one"),
        (json.dumps({"messages": [{"role": "user", "content": 3}]}), "a string 'content'"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant message"),
        (json.dumps({"turns": []}), 'expected {"messages"'),
    ]:
        path.write_text(good + "\n\n" + bad + "\n")
        with pytest.raises(ValueError, match=f"^{path}:3: .*{message}"):
            readers.read_conversations(str(path))
    path.write_text(good + "\n")
    assert readers.read_conversations(str(path))[0]["line"] == 1


def test_loss_falls_on_the_chosen_turns_only(chat_format):
    """Qwen2.5's template: the labelled tokens decode to the assistant contents, each with its
    end-of-turn; with loss on user turns, to the user turns (headers included)."""
    messages = _conversation(2)  # three user / assistant exchanges
    tokenizer = chat_format.tokenizer
    example = chat_format.encode_conversation(messages, ("assistant",))
    labelled = tokenizer.decode(example["labels"][example["labels"] != IGNORE],
                                skip_special_tokens=False)
    assert labelled == "".join(m["content"] + "<|im_end|>\n" for m in messages
                               if m["role"] == "assistant")
    np.testing.assert_array_equal(example["ids"][1:], np.abs(example["labels"][:-1]) *
                                  (example["labels"][:-1] != IGNORE) + example["ids"][1:] *
                                  (example["labels"][:-1] == IGNORE))  # labels are ids shifted
    users = chat_format.encode_conversation(messages, ("user",))
    labelled = tokenizer.decode(users["labels"][users["labels"] != IGNORE],
                                skip_special_tokens=False)
    assert labelled == "".join(f"<|im_start|>user\n{m['content']}<|im_end|>\n" for m in messages
                               if m["role"] == "user")
    prompt = chat_format.prompt_ids(messages[:2])  # what generation starts from
    np.testing.assert_array_equal(example["ids"][:len(prompt)], prompt)
    assert example["labels"][len(prompt) - 1] != IGNORE  # the first answer token is a target
    assert chat_format.stop_id(messages) == tokenizer.token_to_id("<|im_end|>")


def test_a_template_that_rewrites_earlier_turns_is_refused(chat_format):
    """Mistral Nemo moves the system message into the last user turn: no prefix property."""
    mistral = ChatFormat(chat_format.tokenizer, (REPO / "tests/testdata/chat_templates/"
                                                 "mistral-nemo.jinja").read_text(),
                         {"bos_token": "<s>", "eos_token": "</s>"})
    with pytest.raises(ValueError, match="data.jsonl:7: the chat template renders messages"):
        mistral.encode_conversation(_conversation(2), ("assistant",), "data.jsonl:7")


def test_packed_loss_equals_unpacked_and_attention_stays_in_its_conversation(chat_format):
    """Six conversations packed whole into rows of 160 give the loss of the six padded alone
    (mean over their assistant tokens), within 1e-6; every attention probability from a
    conversation's token to a token outside it (another conversation, padding) is exactly 0
    (padding queries carry no loss and attend uniformly)."""
    examples = [chat_format.encode_conversation(_conversation(k), ("assistant",))
                for k in range(6)]
    pad = chat_format.tokenizer.pad_id
    packed = batching._packed_rows(examples, 160, pad, whole=True)
    assert packed["segment_ids"].max() >= 2 and len(packed["ids"]) < len(examples)
    padded = batching.pad_batch(examples, len(examples), pad_id=pad)
    cfg = transformer.size("llama-tiny", vocab_size=chat_format.tokenizer.vocab_size)
    module = transformer.Transformer(cfg, task="causal_lm")
    variables = module.init(jax.random.key(0), np.zeros((1, 8), np.int32))
    loss_packed, aux_packed = classification_loss(
        forward(module, variables, packed, train=False)[0], packed)
    loss_padded, aux_padded = classification_loss(
        forward(module, variables, padded, train=False)[0], padded)
    assert float(aux_packed["count"]) == float(aux_padded["count"]) == sum(
        int((e["labels"] != IGNORE).sum()) for e in examples)
    assert abs(float(loss_packed) - float(loss_padded)) < 1e-6
    _, state = module.apply(variables, packed["ids"], packed["mask"], None, packed["positions"],
                            segment_ids_BT=packed["segment_ids"], mutable=["intermediates"])
    probs = jax.tree.leaves(state["intermediates"])
    assert len(probs) == cfg.num_layers
    segments_BT = packed["segment_ids"]
    real_BT = segments_BT > 0
    across_BTS = (segments_BT[:, :, None] != segments_BT[:, None, :]) & real_BT[:, :, None]
    assert across_BTS.sum() > 1000
    for probs_BGQTS in probs:
        probs_BGQTS = np.asarray(probs_BGQTS)
        assert probs_BGQTS[np.broadcast_to(across_BTS[:, None, None], probs_BGQTS.shape)].max() == 0
        np.testing.assert_allclose(probs_BGQTS.sum(-1).transpose(0, 3, 1, 2)[real_BT], 1.0,
                                   rtol=1e-5)


def test_whole_packing_never_cuts_and_restarts_positions():
    docs = [np.arange(1, n + 1) for n in (5, 9, 3, 7, 2, 8)]
    out = batching.pack_whole(docs, 10, pad_id=0)
    found = []
    for row_ids, row_segments, row_positions in zip(out["ids"], out["segment_ids"],
                                                    out["positions"]):
        for s in range(1, row_segments.max() + 1):
            at = row_segments == s
            found.append(tuple(row_ids[at]))
            np.testing.assert_array_equal(row_positions[at], np.arange(at.sum()))
    assert sorted(found) == sorted(tuple(d) for d in docs)  # each whole, exactly once
    with pytest.raises(ValueError, match="11 tokens, more than a row's 10"):
        batching.pack_whole([np.arange(11)], 10, pad_id=0)


def _experiment():
    spec = importlib.util.spec_from_file_location("banking77_chat",
                                                  REPO / "experiments/banking77_chat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runlocal_learns_planted_answers(tmp_path):
    """Planted data: the answer is the intent of the one keyword in a noisy query (8 intents,
    chance 1/8). Chat SFT from scratch with packing (200 steps of 16 rows x 64 tokens, ~13
    epochs) reaches exact match >= 0.6 on 96 held-out conversations (0.76 measured; an
    untrained model answers none)."""
    rng = np.random.default_rng(0)
    intents = ["card_arrival", "lost_card", "pin_blocked", "top_up", "refund", "exchange_rate",
               "cash_withdrawal", "transfer_fee"]
    keywords = ["arrive", "lost", "pin", "topup", "refund", "rate", "atm", "fee"]
    filler = "please can you help me with my account today why what is the bank".split()
    lines = []
    for _ in range(480):
        k = int(rng.integers(8))
        words = list(rng.choice(filler, 4)) + [keywords[k]] + list(rng.choice(filler, 3))
        lines.append(json.dumps({"messages": [SYSTEM, {"role": "user", "content": " ".join(words)},
                                              {"role": "assistant", "content": intents[k]}]}))
    (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n")
    config = _experiment().get_config("runlocal")
    # the overrides a user would pass as --config.x=y
    config.data.kind, config.data.train_file = "chat", str(tmp_path / "chat.jsonl")
    config.data.labels_file, config.data.system_prompt = "", ""
    config.data.validation_fraction, config.data.max_eval_examples = 0.2, 0
    config.data.max_length, config.data.tokenizer_vocab_size = 64, 400
    config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = 200
    config.train.batch_size, config.train.learning_rate = 16, 3e-3
    results = loop.run(config, str(tmp_path / "run"))
    assert results["data"]["validation_examples"] == 96
    assert results["validation"]["exact_match"] >= 0.6, results["validation"]

