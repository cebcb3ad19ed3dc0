"""Conversations -> token ids with a loss on chosen turns, through the model's chat template.

A turn's tokens are found by rendering prefixes (no string search): for message i, the text
before it is `render(messages[:i])` (for an assistant turn with the generation prompt, so
the header "<|im_start|>assistant\\n" is context, not target) and the text up to its end is
`render(messages[:i + 1])`; the full rendering must start with both, else the template
renders earlier turns differently once later ones follow (Mistral puts the system message
in the last user turn) and the conversation is refused, naming it. The text is then encoded
piece by piece at the span boundaries, so a turn's tokens are exactly its text's tokens and
the prompt's tokens are exactly what generation is given (`prompt_ids`).

An example is `ids` (L,) = tokens[:-1] and `labels` (L,) = tokens[1:] where the predicted
token lies in a loss turn, IGNORE elsewhere (next-token prediction, loss on those turns only).

Axis legend: L one conversation's length.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lmx.data.transforms import IGNORE
from lmx.hf import chat_template


class ChatFormat:
    """A tokenizer with its chat template and named special tokens."""

    def __init__(self, tokenizer, template: str, special_tokens: dict[str, str]):
        self.tokenizer, self.template, self.special_tokens = tokenizer, template, special_tokens

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        return chat_template.render(self.template, messages, special_tokens=self.special_tokens,
                                    add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def turn_spans(self, messages: Sequence[dict], roles: Sequence[str], where: str = ""
                   ) -> tuple[str, list[tuple[int, int]]]:
        """The full rendering and the character spans [start, end) of the turns in `roles`."""
        full, spans = self.render(messages), []
        for i, message in enumerate(messages):
            if message["role"] not in roles:
                continue
            before = self.render(messages[:i], add_generation_prompt=message["role"] == "assistant")
            upto = self.render(messages[:i + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                raise ValueError(
                    f"{where}: the chat template renders messages[:{i + 1}] as something that "
                    "is not a prefix of the whole conversation's text (it changes earlier turns "
                    f"once later ones follow), so turn {i}'s tokens cannot be located; use "
                    "conversations this template renders incrementally")
            spans.append((len(before), len(upto)))
        return full, spans

    def encode_conversation(self, messages: Sequence[dict], loss_roles: Sequence[str],
                            where: str = "") -> dict[str, np.ndarray]:
        """`ids` / `labels` of one conversation (module docstring)."""
        full, spans = self.turn_spans(messages, loss_roles, where)
        cuts = sorted({0, len(full), *[p for span in spans for p in span]})
        tokens, in_loss = [], []
        for start, end in zip(cuts[:-1], cuts[1:]):
            piece = self.encode(full[start:end])
            target = any(s <= start and end <= e for s, e in spans)
            tokens += piece
            in_loss += [target] * len(piece)
        tokens_L, in_loss_L = np.asarray(tokens, np.int32), np.asarray(in_loss, bool)
        if len(tokens_L) < 2 or not in_loss_L[1:].any():
            raise ValueError(f"{where}: no token to learn (roles {list(loss_roles)} render to "
                             "nothing after the first token)")
        labels_L = np.where(in_loss_L[1:], tokens_L[1:], IGNORE).astype(np.int32)
        return {"ids": tokens_L[:-1], "labels": labels_L}

    def prompt_ids(self, messages: Sequence[dict]) -> np.ndarray:
        """The tokens generation starts from: the conversation so far + the assistant header."""
        return np.asarray(self.encode(self.render(messages, add_generation_prompt=True)),
                          np.int32)

    def stop_id(self, messages: Sequence[dict]) -> int:
        """The token that ends an assistant turn: the first one after the content of the last
        assistant message (<|im_end|>, <|eot_id|>, <end_of_turn>, </s>), else eos."""
        full, [*_, (start, end)] = self.turn_spans(messages, ("assistant",))
        content = messages[-1]["content"].strip()
        turn = full[start:end]
        at = turn.find(content) if content else -1
        tail = self.encode(turn[at + len(content):]) if at >= 0 else []
        stop = tail[0] if tail else self.tokenizer.eos_id
        if stop is None:
            raise ValueError("cannot tell which token ends an assistant turn: the template "
                             "writes nothing after it and the tokenizer has no eos token")
        return int(stop)
