"""The Transformer family: BERT-style encoders and GPT/Llama-style decoders from one config.

Axis legend: B batch, T query length, S key length, D model width, N query heads,
G key/value heads (grouped-query attention), Q = N // G query heads per group,
K head dim, F mlp hidden, V vocabulary, P prompt / prefix tokens, L labels,
C cache length (decoding).

Open-decoder options (Qwen's q / k / v biases, q / k norms, Gemma's scaled embeddings,
`(1 + w)` norms, sandwich norms, soft-capping, local / global layers) are general config
fields, implemented in lmx.models.decoder_features and lmx.models.attention.

Decoding keeps keys and values in the `cache` collection: `decode="prefill"` writes the
prompt at the start of the cache, `decode="step"` appends one token per call; the cache
also records which of its slots hold real (not padding) tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models import decoder_features, prompt_encoders
from lmx.models.decoder_features import Mlp, layer_is_local, make_norm, softcap
from lmx.models.layers import (Bottleneck, Dense, Dropout, Embed, add_bias, gelu, layer_norm,
                               matmul)
from lmx.peft import NO_PEFT, PEFT, TOKEN_TABLE, PeftSpec
from lmx.scale import sharding as ax

TASKS = ("hidden", "mlm", "causal_lm", "sequence_classification", "token_classification")
POOLINGS = ("cls", "mean", "last")
from lmx.models.attention import CACHE, DECODE_MODES, Attention, rope_frequencies, rotary  # noqa: E402,F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of one Transformer; `causal=False` is an encoder, True a decoder."""
    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    max_len: int
    causal: bool = False
    num_kv_heads: int = 0  # 0 means num_heads (no grouping)
    type_vocab_size: int = 0  # 0: no token-type embeddings
    positions: str = "learned"  # "learned" | "rope"
    position_offset: int = 0  # RoBERTa: real tokens count positions from here (pads sit below)
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # HF rope_parameters as sorted items
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_scale_offset: float = 0.0  # RMSNorm gain `offset + w`, w from 0 (Gemma: 1.0)
    pre_norm: bool = False  # False: BERT post-LN (with an embedding LayerNorm)
    post_norms: bool = False  # pre_norm blocks also norm each sublayer's output (Gemma 2/3)
    norm_eps: float = 1e-12
    mlp: str = "gelu"  # "gelu" (erf) | "gelu_tanh" | "swiglu" | "geglu_tanh" (Gemma)
    use_bias: bool = True
    qkv_bias: bool = False  # query / key / value biases even when use_bias is False (Qwen2)
    qk_norm: bool = False  # a norm over each query / key head before RoPE (Qwen3, Gemma 3)
    embed_scale: bool = False  # token embeddings times sqrt(embed_dim) (Gemma)
    attention_scale: float = 0.0  # score scale; 0: head_dim ** -0.5 (Gemma: query_pre_attn)
    attention_softcap: float = 0.0  # scores -> c * tanh(scores / c) before the mask; 0: off
    final_softcap: float = 0.0  # the same on causal-LM logits (Gemma 2); 0: off
    sliding_window: int = 0  # local layers see keys fewer than this many slots back
    layer_types: tuple[str, ...] = ()  # per layer "global" | "local"; (): all global
    rope_local_theta: float = 0.0  # local layers' RoPE base, unscaled (Gemma 3); 0: global's
    kv_cache_dtype: str = "float32"  # "bfloat16" halves the decoding cache
    tie_embeddings: bool = True
    use_pooler: bool = False  # BERT's tanh pooler on [CLS] before a sequence classifier
    pooler_activation: str = "tanh"  # "tanh" (BERT, RoBERTa) | "relu" (DistilBERT)
    classifier_bias: bool = True  # False: GPT-2 / Llama `score` heads
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    dtype: str = "float32"  # matmul input dtype; accumulation is always float32
    scan_layers: bool = False  # one scanned block (params stacked under `layers`): fast compile
    remat: str = "none"  # "none" | "full" | "dots" (save matmul outputs): recompute in backward
    attention: str = "einsum"  # a kernel of lmx.models.kernels.KERNELS

    def __post_init__(self):
        decoder_features.check(self)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


_BERT = dict(type_vocab_size=2, norm_eps=1e-12, mlp="gelu", max_len=512, vocab_size=30522)
_LLAMA = dict(causal=True, positions="rope", norm="rmsnorm", pre_norm=True, norm_eps=1e-5,
              mlp="swiglu", use_bias=False, tie_embeddings=False,
              dropout_rate=0.0, attention_dropout_rate=0.0)
SIZES: dict[str, TransformerConfig] = {
    "minilm-l6": TransformerConfig(embed_dim=384, num_layers=6, num_heads=12, head_dim=32,
                                   mlp_dim=1536, use_pooler=True, **_BERT),
    "bert-base": TransformerConfig(embed_dim=768, num_layers=12, num_heads=12, head_dim=64,
                                   mlp_dim=3072, use_pooler=True, **_BERT),
    "bert-tiny": TransformerConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4,
                                   head_dim=8, mlp_dim=64, max_len=64, type_vocab_size=2),
    # Small from-scratch models (vocabulary set by the tokenizer at training time):
    # BERT-mini (Turc et al. 2019), BERT4Rec's MovieLens size (Sun et al. 2019), nanoGPT's
    # shakespeare_char GPT (Karpathy), narrowed to fit a 2-core CPU's 30 minutes.
    "bert-mini": TransformerConfig(embed_dim=256, num_layers=4, num_heads=4, head_dim=64,
                                   mlp_dim=1024, use_pooler=True, **_BERT),
    "bert4rec": TransformerConfig(vocab_size=128, embed_dim=64, num_layers=2, num_heads=2,
                                  head_dim=32, mlp_dim=256, max_len=200, dropout_rate=0.1,
                                  attention_dropout_rate=0.1),
    "gpt-char": TransformerConfig(vocab_size=128, embed_dim=256, num_layers=4, num_heads=4,
                                  head_dim=64, mlp_dim=1024, max_len=256, causal=True,
                                  pre_norm=True, norm_eps=1e-5, mlp="gelu_tanh",
                                  dropout_rate=0.1, attention_dropout_rate=0.1),
    "gpt2-small": TransformerConfig(vocab_size=50257, embed_dim=768, num_layers=12, num_heads=12,
                                    head_dim=64, mlp_dim=3072, max_len=1024, causal=True,
                                    pre_norm=True, norm_eps=1e-5, mlp="gelu_tanh"),
    "gpt2-tiny": TransformerConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4,
                                   head_dim=8, mlp_dim=64, max_len=64, causal=True,
                                   pre_norm=True, norm_eps=1e-5, mlp="gelu_tanh"),
    # A small Llama-style decoder for chat SFT from scratch on a 2-core CPU (banking77_chat).
    "llama-chat-mini": TransformerConfig(vocab_size=2048, embed_dim=192, num_layers=4,
                                         num_heads=6, num_kv_heads=2, head_dim=32, mlp_dim=512,
                                         max_len=256, **_LLAMA),
    "llama-tiny": TransformerConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4,
                                    num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=64, **_LLAMA),
    "llama-1b": TransformerConfig(vocab_size=128256, embed_dim=2048, num_layers=16, num_heads=32,
                                  num_kv_heads=8, head_dim=64, mlp_dim=8192, max_len=8192,
                                  rope_theta=500000.0, **{**_LLAMA, "tie_embeddings": True}),
    # Shapes for ahead-of-time plans (lmx.scale.aot --topology): Meta-Llama-3-8B and
    # Qwen2.5-7B. Qwen2's q / k / v biases are left out (use_bias sets every Dense at once):
    # 0.26 MB of bf16 the plan does not count.
    "llama3-8b": TransformerConfig(vocab_size=128256, embed_dim=4096, num_layers=32,
                                   num_heads=32, num_kv_heads=8, head_dim=128, mlp_dim=14336,
                                   max_len=8192, rope_theta=500000.0, **_LLAMA),
    "qwen2.5-7b": TransformerConfig(vocab_size=152064, embed_dim=3584, num_layers=28,
                                    num_heads=28, num_kv_heads=4, head_dim=128, mlp_dim=18944,
                                    max_len=32768, rope_theta=1000000.0,
                                    **{**_LLAMA, "norm_eps": 1e-6}),
}


_norm = make_norm


class Embeddings(nn.Module):
    """Token (+ learned position, + token type) embeddings, optional soft prompt prepended."""
    cfg: TransformerConfig
    peft: PeftSpec = NO_PEFT

    def setup(self):
        cfg = self.cfg
        init = nn.initializers.normal(0.02)
        self.token = Embed(cfg.vocab_size, cfg.embed_dim, (ax.VOCAB, ax.EMBED), init,
                           peft=self.peft, name="token")
        if cfg.positions == "learned":
            self.position = nn.Embed(cfg.max_len, cfg.embed_dim, name="position",
                                     embedding_init=nn.with_logical_partitioning(init, (None, ax.EMBED)))
        if cfg.type_vocab_size:
            self.token_type = nn.Embed(cfg.type_vocab_size, cfg.embed_dim, name="token_type",
                                       embedding_init=nn.with_logical_partitioning(init, (None, ax.EMBED)))
        if not cfg.pre_norm:
            self.norm = _norm(cfg, "norm")
        if self.peft.num_prompt_tokens and self.peft.prompt_encoder:  # P-tuning
            self.prompt_encoder = prompt_encoders.prompt_encoder(
                self.peft.prompt_encoder, self.peft.num_prompt_tokens, cfg.embed_dim,
                self.peft.encoder_hidden_size or cfg.embed_dim, name="prompt_encoder")
        elif self.peft.num_prompt_tokens:
            init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (ax.RANK, None))
            shape = (self.peft.num_prompt_tokens, cfg.embed_dim)
            self.prompt = self.variable(PEFT, "prompt", lambda: init(self.make_rng("params"), shape))
        self.dropout = Dropout(cfg.dropout_rate)

    def __call__(self, ids_BT, token_types_BT, positions_BT, deterministic: bool,
                 embeds_BTD=None):
        if embeds_BTD is not None and self.token.lora:
            raise ValueError("embeds_BTD replaces the token lookup, which carries LoRA here")
        x_BTD = self.token(ids_BT) if embeds_BTD is None else embeds_BTD
        if self.cfg.embed_scale:  # Gemma: a float32 sqrt(D), as transformers computes it
            x_BTD = x_BTD * jnp.asarray(self.cfg.embed_dim ** 0.5, jnp.float32).astype(x_BTD.dtype)
        num_prompt = self.peft.num_prompt_tokens
        if num_prompt:
            prompt_PD = (self.prompt_encoder() if self.peft.prompt_encoder
                         else self.prompt.value)
            prompt_BPD = jnp.broadcast_to(prompt_PD, (x_BTD.shape[0], *prompt_PD.shape))
            x_BTD = jnp.concatenate([prompt_BPD.astype(x_BTD.dtype), x_BTD], axis=1)
            token_types_BT = jnp.pad(token_types_BT, ((0, 0), (num_prompt, 0)))
            positions_BT = jnp.concatenate(
                [jnp.broadcast_to(jnp.arange(num_prompt), (x_BTD.shape[0], num_prompt)),
                 positions_BT + num_prompt], axis=1)
        if self.cfg.positions == "learned":
            x_BTD = x_BTD + self.position(positions_BT)
        if self.cfg.type_vocab_size:
            x_BTD = x_BTD + self.token_type(token_types_BT)
        if not self.cfg.pre_norm:
            x_BTD = self.norm(x_BTD)
        return self.dropout(x_BTD, deterministic=deterministic), positions_BT


class Block(nn.Module):
    """One layer: attention then MLP, post-LN (BERT) or pre-norm (GPT/Llama), optionally
    with post-sublayer norms (Gemma); `local` layers attend within the sliding window."""
    cfg: TransformerConfig
    peft: PeftSpec = NO_PEFT
    local: bool = False

    @nn.compact
    def __call__(self, x_BTD, mask_BTS, positions_BT, deterministic: bool, mask_BT=None,
                 decode: str = "", prefix_2PGK=None):
        cfg, peft = self.cfg, self.peft
        drop = lambda h: Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        attention = Attention(cfg, peft, self.local, name="attention")
        mlp = Mlp(cfg, peft, name="mlp")
        attention_norm, mlp_norm = _norm(cfg, "attention_norm"), _norm(cfg, "mlp_norm")

        def adapt(h_BTD, where):
            wanted = (peft.adapter == "houlsby" or
                      (peft.adapter == "pfeiffer" and where == "mlp"))
            if not wanted:
                return h_BTD
            return Bottleneck(peft.adapter_size, dtype=cfg.compute_dtype,
                              name=f"adapter_{where}")(h_BTD)

        attend = lambda h_BTD: attention(h_BTD, mask_BTS, mask_BT, positions_BT, deterministic,
                                         decode, prefix_2PGK)
        post = lambda name: _norm(cfg, name) if cfg.post_norms else (lambda h: h)
        if cfg.pre_norm:
            h_BTD = post("attention_post_norm")(attend(attention_norm(x_BTD)))
            x_BTD = x_BTD + drop(adapt(h_BTD, "attention"))
            h_BTD = post("mlp_post_norm")(mlp(mlp_norm(x_BTD), deterministic))
            x_BTD = x_BTD + drop(adapt(h_BTD, "mlp"))
        else:
            x_BTD = attention_norm(x_BTD + adapt(drop(attend(x_BTD)), "attention"))
            x_BTD = mlp_norm(x_BTD + adapt(drop(mlp(x_BTD, deterministic)), "mlp"))
        return nn.with_logical_constraint(x_BTD, (ax.BATCH, ax.LENGTH, ax.EMBED))


REMAT_POLICIES = {"none": None, "full": None,
                  "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}


class _ScanCell(nn.Module):
    """One Block as a scan body: (x, broadcast inputs) -> (x, None)."""
    cfg: TransformerConfig
    peft: PeftSpec
    deterministic: bool
    decode: str
    remat: str

    @nn.compact
    def __call__(self, x_BTD, mask_BTS, positions_BT, mask_BT):
        block = Block
        if self.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], static_argnums=(4, 6))
        x_BTD = block(self.cfg, self.peft, layer_is_local(self.cfg, 0), name="block")(
            x_BTD, mask_BTS, positions_BT, self.deterministic, mask_BT, self.decode)
        return x_BTD, None


def stack_layers(tree: dict, num_layers: int) -> dict:
    """Variables of an unrolled model (`layer_i/...`) as a scanned model's (`layers/block/...`
    with a leading layer axis), in every collection."""
    out = {}
    for collection, node in tree.items():
        if not isinstance(node, dict) or "layer_0" not in node:
            out[collection] = node
            continue
        rest = {k: v for k, v in node.items() if not k.startswith("layer_")}
        layers = [node[f"layer_{i}"] for i in range(num_layers)]
        rest["layers"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
        out[collection] = rest
    return out


def unstack_layers(tree: dict, num_layers: int) -> dict:
    """Inverse of stack_layers."""
    out = {}
    for collection, node in tree.items():
        if not isinstance(node, dict) or "layers" not in node:
            out[collection] = node
            continue
        rest = {k: v for k, v in node.items() if k != "layers"}
        for i in range(num_layers):
            rest[f"layer_{i}"] = jax.tree.map(lambda x: x[i], node["layers"]["block"])
        out[collection] = rest
    return out


class Transformer(nn.Module):
    """Embeddings, `num_layers` blocks and a task head; `apply` returns the logits.

    Attributes:
      cfg: the architecture.
      task: one of TASKS ("hidden" returns the last hidden states).
      num_labels: classes of a classification head.
      pooling: "cls" (first token), "mean" (masked mean) or "last" (last real token).
      peft: the PEFT modules to build (their weights go to the `peft` collection).
    """
    cfg: TransformerConfig
    task: str = "hidden"
    num_labels: int = 0
    pooling: str = "cls"
    peft: PeftSpec = NO_PEFT

    @nn.compact
    def __call__(self, ids_BT, mask_BT=None, token_types_BT=None, positions_BT=None, *,
                 deterministic: bool = True, embeds_BTD=None, decode: str = "",
                 targets_BM=None, segment_ids_BT=None):
        """Logits of the task head (or the last hidden states for task "hidden").

        Args:
          ids_BT: token ids; mask_BT: 1 for real tokens (default all); token_types_BT
            (default 0); positions_BT (default: 0.. per row, or RoBERTa's offsets).
          embeds_BTD: replaces the token embedding lookup of `ids_BT` (attribution methods
            differentiate through it); positions, token types, the embedding norm and the
            soft prompt still apply.
          decode: "" (no cache), "prefill" (write the prompt to the `cache` collection) or
            "step" (append these tokens); the cache must be mutable; positions are required.
          targets_BM: token-level tasks only: the M positions per row whose head outputs to
            compute (masked-LM training: the masked tokens, so the vocabulary projection runs
            on ~15% of the positions); logits are then (B, M, V). Default: every position.
          segment_ids_BT: packed rows (lmx.data.batching.pack): a token attends only to tokens
            of its own segment (1, 2, ...; 0 is padding); pass the packer's `positions_BT` so
            positions restart per segment. Not with a soft prompt, a prefix or decoding.
        """
        cfg = self.cfg
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {TASKS}")
        if TOKEN_TABLE in self.peft.lora_targets and (
                self.task == "mlm" or (self.task == "causal_lm" and cfg.tie_embeddings)):
            raise ValueError(f"LoRA on the token table ({TOKEN_TABLE}) of a {self.task} model "
                             "whose head reads the same table (tied input / output embeddings) "
                             "is not supported (its head reads the base table); target Dense only")
        B, T = ids_BT.shape
        mask_BT = jnp.ones((B, T), bool) if mask_BT is None else mask_BT.astype(bool)
        token_types_BT = jnp.zeros_like(ids_BT) if token_types_BT is None else token_types_BT
        if positions_BT is None:
            positions_BT = self._default_positions(mask_BT, decode)
        prompted = self.peft.num_prompt_tokens and decode != "step"
        embeddings = Embeddings(cfg, self.peft if prompted else dataclasses.replace(
            self.peft, num_prompt_tokens=0), name="embed")
        x_BTD, positions_BT = embeddings(ids_BT, token_types_BT, positions_BT, deterministic,
                                         embeds_BTD)
        num_prompt = x_BTD.shape[1] - T
        full_mask_BS = jnp.pad(mask_BT, ((0, 0), (num_prompt, 0)), constant_values=True)
        S = x_BTD.shape[1]
        mask_BTS = jnp.broadcast_to(full_mask_BS[:, None, :], (B, S, S))
        if cfg.causal:
            mask_BTS = mask_BTS & jnp.tril(jnp.ones((S, S), bool))[None]
        if segment_ids_BT is not None:
            if num_prompt or decode or self.peft.num_prefix_tokens:
                raise ValueError("segment_ids_BT (packed rows) cannot be combined with a soft "
                                 "prompt, a prefix or decoding")
            mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
        # per-token segment ids (0 padding) for kernels that take the mask's structure
        segments_BS = (full_mask_BS.astype(jnp.int32) if segment_ids_BT is None
                       else jnp.where(full_mask_BS, segment_ids_BT, 0))
        x_BTD = nn.with_logical_constraint(x_BTD, (ax.BATCH, ax.LENGTH, ax.EMBED))
        x_BTD = self._blocks(x_BTD, None if decode else mask_BTS, positions_BT, deterministic,
                             segments_BS, decode)
        if cfg.pre_norm:
            x_BTD = _norm(cfg, "final_norm")(x_BTD)
        if self.task == "sequence_classification":
            if segment_ids_BT is not None:  # packed: every token carries its segment's class
                pooled_BTD = self._pooler(_pool_segments(self.pooling, x_BTD, segment_ids_BT))
                return self._classify(pooled_BTD, embeddings, deterministic)
            if self.peft.prompt_in_pooling:
                return self._classify(self._pool(x_BTD, full_mask_BS), embeddings, deterministic)
            x_BTD = self._pool(x_BTD[:, num_prompt:], mask_BT)
            return self._classify(x_BTD, embeddings, deterministic)
        x_BTD = x_BTD[:, num_prompt:]  # drop the soft prompt's positions
        if self.task == "hidden":
            return x_BTD
        if targets_BM is not None:
            x_BTD = jnp.take_along_axis(x_BTD, targets_BM[..., None], axis=1)  # (B, M, D)
        return self._classify(x_BTD, embeddings, deterministic)

    def _blocks(self, x_BTD, mask_BTS, positions_BT, deterministic, mask_BT, decode):
        """`num_layers` blocks: unrolled (`layer_i`) or one scanned block (`layers`, stacked)."""
        cfg = self.cfg
        x_BTD = x_BTD.astype(jnp.float32)  # the residual stream, also under a bf16 base
        if cfg.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={cfg.remat!r} is not one of {sorted(REMAT_POLICIES)}")
        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], static_argnums=(4, 6))
        prefix_L2PGK = prompt_encoders.layer_prefixes(cfg, self.peft)  # None: per-layer own
        if not cfg.scan_layers:
            for i in range(cfg.num_layers):
                x_BTD = block(cfg, self.peft, layer_is_local(cfg, i), name=f"layer_{i}")(
                    x_BTD, mask_BTS, positions_BT, deterministic, mask_BT, decode,
                    None if prefix_L2PGK is None else prefix_L2PGK[i])
            return x_BTD
        if len(set(cfg.layer_types)) > 1:
            raise ValueError("scan_layers needs every layer alike; layer_types mixes local and "
                             "global layers (set scan_layers=False)")
        scanned = nn.scan(
            _ScanCell, variable_axes={c: 0 for c in ("params", PEFT, CACHE, "intermediates")},
            split_rngs={"params": True, "dropout": True}, length=cfg.num_layers,
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            metadata_params={nn.PARTITION_NAME: ax.LAYERS})
        x_BTD, _ = scanned(cfg, self.peft, deterministic, decode, cfg.remat, name="layers")(
            x_BTD, mask_BTS, positions_BT, mask_BT)
        return x_BTD

    def _classify(self, x_BxD, embeddings, deterministic):
        table_VD = embeddings.token.embedding
        return Head(self.cfg, self.task, self.num_labels, self.peft.head_in_peft,
                    name="head")(x_BxD, table_VD, deterministic)

    def _default_positions(self, mask_BT, decode):
        B, T = mask_BT.shape
        if decode:
            raise ValueError("decoding needs explicit positions_BT (see lmx.models.generate)")
        if self.cfg.position_offset:  # RoBERTa: cumsum over real tokens, pads at offset - 1
            real_BT = mask_BT.astype(jnp.int32)
            return jnp.cumsum(real_BT, axis=1) * real_BT + self.cfg.position_offset - 1
        # a PEFT prefix occupies positions 0..P-1 as a cache would (HF semantics)
        start = self.peft.num_prefix_tokens
        return jnp.broadcast_to(jnp.arange(start, start + T), (B, T))

    def _pool(self, h_BTD, mask_BT):
        """Sequence pooling (and BERT's pretrained tanh pooler): returns a length-1 sequence."""
        if self.pooling == "mean":
            weights_BT = mask_BT.astype(h_BTD.dtype)
            pooled_BD = (jnp.einsum("btd,bt->bd", h_BTD, weights_BT)
                         / jnp.maximum(weights_BT.sum(-1, keepdims=True), 1.0))
        elif self.pooling == "cls":
            pooled_BD = h_BTD[:, 0]
        elif self.pooling == "last":  # decoders: the rightmost real token (either padding side)
            last_B = jnp.argmax(jnp.arange(mask_BT.shape[1])[None, :] * mask_BT, axis=-1)
            pooled_BD = jnp.take_along_axis(h_BTD, last_B[:, None, None], axis=1)[:, 0]
        else:
            raise ValueError(f"pooling={self.pooling!r} is not one of {POOLINGS}")
        return self._pooler(pooled_BD)

    def _pooler(self, pooled_BxD):
        """BERT's pretrained tanh pooler (when the architecture has one)."""
        cfg = self.cfg
        if not cfg.use_pooler:
            return pooled_BxD
        activation = {"tanh": jnp.tanh, "relu": nn.relu}[cfg.pooler_activation]
        return activation(Dense(cfg.embed_dim, (ax.EMBED, None), dtype=cfg.compute_dtype,
                                peft=self.peft, name="pooler")(pooled_BxD))


def _pool_segments(pooling: str, h_BTD, segment_ids_BT):
    """Per-segment pooling of packed rows: each token gets its segment's pooled vector ("cls":
    the segment's first token, "mean": its masked mean, "last": its last token); padding
    (segment 0) gets zeros. Train on it with the label at each segment's first token."""
    real_BT = segment_ids_BT > 0
    same_BTU = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]) & real_BT[:, None, :]
    if pooling == "mean":
        pick_BTU = same_BTU.astype(h_BTD.dtype)
        pick_BTU = pick_BTU / jnp.maximum(pick_BTU.sum(-1, keepdims=True), 1.0)
    elif pooling in ("cls", "last"):
        previous_BT = jnp.pad(segment_ids_BT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
        following_BT = jnp.pad(segment_ids_BT[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
        edge_BT = segment_ids_BT != (previous_BT if pooling == "cls" else following_BT)
        pick_BTU = (same_BTU & edge_BT[:, None, :]).astype(h_BTD.dtype)
    else:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    return jnp.einsum("btu,bud->btd", pick_BTU, h_BTD)


class Head(nn.Module):
    """Task heads; everything under `params/head` is new for a downstream task."""
    cfg: TransformerConfig
    task: str
    num_labels: int = 0
    in_peft: bool = False  # the classifier in the `peft` collection (a named adapter's head)

    @nn.compact
    def __call__(self, h_BxD, table_VD, deterministic: bool):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        if self.task == "mlm":
            h_BxD = Dense(cfg.embed_dim, (ax.EMBED, None), dtype=dt, name="transform")(h_BxD)
            h_BxD = layer_norm("transform_norm", cfg.norm_eps)(gelu(h_BxD, approximate=False))
            bias_V = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros, (ax.VOCAB,)), (cfg.vocab_size,))
            return add_bias(matmul(h_BxD, table_VD.T, dt), bias_V)
        if self.task == "causal_lm":
            if cfg.tie_embeddings:
                return softcap(matmul(h_BxD, table_VD.T, dt), cfg.final_softcap)
            return softcap(Dense(cfg.vocab_size, (ax.EMBED, ax.VOCAB), use_bias=False, dtype=dt,
                                 name="lm")(h_BxD), cfg.final_softcap)
        # sequence (already pooled) or token classification
        h_BxD = Dropout(cfg.dropout_rate)(h_BxD, deterministic=deterministic)
        use_bias = cfg.classifier_bias or self.task == "token_classification"
        return Dense(self.num_labels, (ax.EMBED, None), use_bias=use_bias, dtype=dt,
                     in_peft=self.in_peft, name="classifier")(h_BxD)


def size(name: str, **overrides: Any) -> TransformerConfig:
    """A named size from SIZES with field overrides (e.g. dtype, dropout)."""
    if name not in SIZES:
        raise ValueError(f"unknown transformer size {name!r}; known: {sorted(SIZES)}")
    return dataclasses.replace(SIZES[name], **overrides)
