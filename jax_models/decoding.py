"""Whisper decoding (functional JAX or EasyDeL): one jitted loop per (batch, prefix) shape; host-side rules.

The loop follows openai/whisper ``decoding.py``: the logit filters ``SuppressBlank``,
``SuppressTokens`` and ``ApplyTimestampRules`` run inside the loop, greedy or sampled at a
per-row temperature (a traced value, so one compilation serves every temperature), and each
row stops at its own end-of-text while the batch continues. Prefixes of different lengths
(prompts) are left-padded to a fixed bucket with an attention mask, so one compilation serves
every prompt up to the bucket's length.

Host-side: temperature fallback criteria (compression ratio > 2.4 or avg log-prob < -1.0,
openai/whisper ``transcribe.py``), and timestamp tokens → segments.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from server.core.audio import TIME_PRECISION

NEG_INF = -jnp.inf


class WhisperTokenizer:
    """Whisper's byte-level BPE tokenizer read from a ``tokenizer.json`` with the ``tokenizers``
    library: the part of transformers' ``WhisperTokenizer`` the engine uses, without importing
    transformers (its import took ~9 s of a server's start-up on a loaded 2-core machine,
    bench/NOTES.md "Cold start").

    ``decode`` gives transformers 5.5's text for the same ids (tests/test_engine.py compares
    them): the ``tokenizers`` decode with special tokens kept, the optional clean-up of spaces
    (``clean_up_tokenization_spaces`` of ``tokenizer_config.json``, false for Whisper), then the
    ``<|1.23|>`` timestamp texts removed.

    Args:
        model_dir: a Hugging Face Whisper directory holding ``tokenizer.json`` (and usually
            ``tokenizer_config.json``).

    Raises:
        OSError: no ``tokenizer.json``; ``Exception`` from ``tokenizers`` for a malformed one.
    """

    TIMESTAMP = re.compile(r"<\|(\d+\.\d+)\|>")  # transformers' WhisperTokenizer.timestamp_pat

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))

        def token_id(key: str) -> int | None:
            tok = config.get(key)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            return self._tok.token_to_id(tok) if tok else None

        self.pad_token_id, self.unk_token_id = token_id("pad_token"), token_id("unk_token")

    def __len__(self) -> int:
        """Vocabulary size with the added (special) tokens."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` (no special tokens added unless asked)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids) -> str:
        """Text of token ids (a sequence of ints); timestamp tokens give no text."""
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
        if self.clean_up_tokenization_spaces:  # transformers' PreTrainedTokenizerBase.clean_up_tokenization
            for a, b in (
                (" .", "."),
                (" ?", "?"),
                (" !", "!"),
                (" ,", ","),
                (" ' ", "'"),
                (" n't", "n't"),
                (" 'm", "'m"),
                (" 's", "'s"),
                (" 've", "'ve"),
                (" 're", "'re"),
            ):
                text = text.replace(a, b)
        return self.TIMESTAMP.sub("", text)

    def convert_tokens_to_ids(self, tokens):
        """The id of a token string, or a list of them for a list of strings; a string not in the
        vocabulary gives the unknown token's id (``<|endoftext|>`` for Whisper), as transformers'."""

        def one(tok: str) -> int | None:
            i = self._tok.token_to_id(tok)
            return self.unk_token_id if i is None else i

        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        """The token string of an id (``None`` outside the vocabulary), or a list of them for a
        sequence of ids."""
        if isinstance(ids, (int, np.integer)):
            return self._tok.id_to_token(int(ids))
        return [self._tok.id_to_token(int(i)) for i in ids]


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids Whisper's decoding needs, read from the tokenizer and generation config."""

    eot: int
    sot: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    transcribe: int
    translate: int
    lang_to_id: dict[str, int] = field(hash=False, compare=False)
    blank: tuple[int, ...] = ()
    suppress: tuple[int, ...] = ()
    multilingual: bool = True

    @classmethod
    def from_pretrained(cls, tokenizer, generation_config) -> SpecialTokens:
        """Build from a ``WhisperTokenizer`` (this module's, or transformers') and a generation config
        (transformers' ``GenerationConfig`` or any object with its attributes).

        Raises:
            ValueError: the tokenizer lacks Whisper's special tokens.
        """

        def tid(tok: str) -> int:
            i = tokenizer.convert_tokens_to_ids(tok)
            if i is None or tokenizer.convert_ids_to_tokens(int(i)) != tok:
                raise ValueError(f"tokenizer has no special token {tok}")
            return int(i)

        no_ts = int(generation_config.no_timestamps_token_id)
        lang_to_id = {k.strip("<|>"): int(v) for k, v in (generation_config.lang_to_id or {}).items()}
        try:
            no_speech = tid("<|nospeech|>")
        except ValueError:
            no_speech = tid("<|nocaptions|>")
        suppress = tuple(int(t) for t in (generation_config.suppress_tokens or []) if int(t) >= 0)
        blank = tuple(tokenizer.encode(" ", add_special_tokens=False))
        return cls(
            eot=tid("<|endoftext|>"),
            sot=tid("<|startoftranscript|>"),
            sot_prev=tid("<|startofprev|>"),
            no_speech=no_speech,
            no_timestamps=no_ts,
            timestamp_begin=no_ts + 1,
            transcribe=tid("<|transcribe|>"),
            translate=tid("<|translate|>"),
            lang_to_id=lang_to_id,
            blank=blank,
            suppress=suppress,
            multilingual=bool(lang_to_id),
        )

    def task_tokens(self, language: str | None, task: str) -> list[int]:
        """``[<|startoftranscript|>, <|lang|>, <|task|>]`` (just SOT for English-only models)."""
        if not self.multilingual:
            return [self.sot]
        lang = self.lang_to_id[language or "en"]
        return [self.sot, lang, self.translate if task == "translate" else self.transcribe]


class DecodeResult(NamedTuple):
    """Device outputs of one batch: ``tokens`` int32 ``(B, max_new)`` (end-of-text padded),
    ``sum_logprob`` float32 ``(B,)``, ``n_tokens`` int32 ``(B,)`` (text+timestamps, EOT
    excluded), ``no_speech_prob`` float32 ``(B,)``."""

    tokens: jax.Array
    sum_logprob: jax.Array
    n_tokens: jax.Array
    no_speech_prob: jax.Array


class History(NamedTuple):
    """What the timestamp rules need from tokens sampled *before* this decode, per row.

    A continuation (``prefix_history``) decodes on from a window's own tokens, which then count
    as already sampled: ``last``/``pen`` are the last two of them (-1 where there are fewer),
    ``last_ts`` the largest timestamp token among them (-1 if none), all int32 ``(B,)``, and
    ``active`` bool ``(B,)`` marks the rows that continue (they skip the initial-timestamp rule).
    ``timestamps`` bool ``(B,)`` is False for rows whose prefix ends with ``<|notimestamps|>``:
    they sample text only (timestamp tokens barred, no timestamp rules), as openai/whisper's
    ``without_timestamps``.
    """

    last: jax.Array
    pen: jax.Array
    last_ts: jax.Array
    active: jax.Array
    timestamps: jax.Array


def no_history(batch: int) -> History:
    """``History`` of rows that start fresh after their prefix (the usual decode)."""
    none = jnp.full((batch,), -1, jnp.int32)
    return History(none, none, none, jnp.zeros((batch,), bool), jnp.ones((batch,), bool))


def prefix_history(prefix: jax.Array, n_hist: jax.Array, ids: SpecialTokens) -> History:
    """``History`` from the last ``n_hist`` tokens of each left-padded prefix row.

    Args:
        prefix: int32 ``(B, P)``, left-padded; a continuing row ends with the tokens its window
            already sampled (text and timestamps, no end-of-text).
        n_hist: int32 ``(B,)``, how many trailing prefix tokens were sampled (0: a fresh row).
    """
    B, P = prefix.shape
    pos = jnp.arange(P)[None, :]
    in_hist = pos >= (P - n_hist)[:, None]
    last = jnp.where(n_hist >= 1, prefix[:, P - 1], -1)
    pen = jnp.where(n_hist >= 2, prefix[:, P - 2], -1)
    last_ts = jnp.max(jnp.where(in_hist & (prefix >= ids.timestamp_begin), prefix, -1), axis=1)
    timestamps = (n_hist > 0) | (prefix[:, P - 1] != ids.no_timestamps)
    return History(last.astype(jnp.int32), pen.astype(jnp.int32), last_ts.astype(jnp.int32), n_hist > 0, timestamps)


def apply_logit_filters(
    logits: jax.Array,
    generated: jax.Array,
    step: jax.Array,
    ids: SpecialTokens,
    suppress_mask: jax.Array,
    max_initial_timestamp_index: int = 50,
    history: History | None = None,
) -> tuple[jax.Array, jax.Array]:
    """openai/whisper's SuppressBlank, SuppressTokens and ApplyTimestampRules, batched.

    Args:
        logits: float32 ``(B, V)`` next-token logits.
        generated: int32 ``(B, M)`` tokens sampled so far (valid where index < ``step``).
        step: int32 scalar or ``(B,)`` (each row's own count: continuous batching), number of
            tokens sampled so far.
        suppress_mask: bool ``(V,)``, True for always-suppressed tokens.
        max_initial_timestamp_index: the first timestamp may be at most this × 0.02 s (1.0 s).
        history: tokens sampled before this decode (``prefix_history``); the rules then see
            ``history + generated`` as one sequence. ``None``: every row starts fresh.

    Returns:
        ``(logits, logprobs)``, float32 ``(B, V)`` each: the logits with forbidden tokens set to
        ``-inf`` and their log-softmax. The log-softmax is taken once, before the last rule
        (timestamps forced when their total probability beats every text token), and corrected
        for it in place of a second pass over the vocabulary.
    """
    B, V = logits.shape
    if history is None:
        history = no_history(B)
    idx = jnp.arange(V)
    tsb = ids.timestamp_begin
    step = jnp.broadcast_to(step, (B,))
    first = step == 0
    logits = jnp.where(suppress_mask[None, :], NEG_INF, logits)
    blank = jnp.zeros((V,), bool).at[jnp.array(list(ids.blank) + [ids.eot])].set(True)
    logits = jnp.where(first[:, None] & blank[None, :], NEG_INF, logits)
    logits = logits.at[:, ids.no_timestamps].set(NEG_INF)

    M = generated.shape[1]
    pos = jnp.arange(M)

    def sampled(back: int) -> jax.Array:  # the token sampled ``back`` steps ago, (B,)
        return jnp.take_along_axis(generated, jnp.clip(step - back, 0, M - 1)[:, None], 1)[:, 0]

    last = jnp.where(step >= 1, sampled(1), history.last)
    pen = jnp.where(step >= 2, sampled(2), jnp.where(step == 1, history.last, history.pen))
    # a text-only row has every timestamp barred here, so the rules below never see one from it
    # (only the initial-timestamp rule, which bars text, has to skip it explicitly)
    ts_on = history.timestamps
    last_was_ts = last >= tsb
    pen_was_ts = (pen < 0) | (pen >= tsb)  # openai: a sequence shorter than 2 counts as "timestamp"
    is_ts_vocab = idx >= tsb
    is_text_vocab = idx < ids.eot
    logits = jnp.where(~ts_on[:, None] & is_ts_vocab[None, :], NEG_INF, logits)
    logits = jnp.where((last_was_ts & pen_was_ts)[:, None] & is_ts_vocab[None, :], NEG_INF, logits)
    logits = jnp.where((last_was_ts & ~pen_was_ts)[:, None] & is_text_vocab[None, :], NEG_INF, logits)

    valid_ts = (pos[None, :] < step[:, None]) & (generated >= tsb)
    last_ts = jnp.maximum(jnp.max(jnp.where(valid_ts, generated, -1), axis=1), history.last_ts)
    threshold = jnp.where(last_was_ts & ~pen_was_ts, last_ts, last_ts + 1)
    monotonic = (last_ts >= 0)[:, None] & is_ts_vocab[None, :] & (idx[None, :] < threshold[:, None])
    logits = jnp.where(monotonic, NEG_INF, logits)

    first_mask = (idx < tsb) | (idx > tsb + max_initial_timestamp_index)
    logits = jnp.where((first & ~history.active & ts_on)[:, None] & first_mask[None, :], NEG_INF, logits)

    logprobs = jax.nn.log_softmax(logits, axis=-1)
    ts_logprob = jax.nn.logsumexp(logprobs[:, tsb:], axis=-1)
    max_text = jnp.max(logprobs[:, :tsb], axis=-1)
    force_ts = ts_logprob > max_text
    forbid = force_ts[:, None] & (idx < tsb)[None, :]
    logits = jnp.where(forbid, NEG_INF, logits)
    # renormalising over the timestamps alone: log p'(t) = log p(t) - log P(timestamp)
    logprobs = jnp.where(forbid, NEG_INF, logprobs - jnp.where(force_ts, ts_logprob, 0.0)[:, None])
    return logits, logprobs


def _next_tokens(ids: SpecialTokens, logits, logprobs, temperature, keys, step, live) -> tuple[jax.Array, jax.Array]:
    """Each row's next token and its log-probability: greedy where ``temperature`` is 0, else
    sampled at it with the row's key folded with ``step`` (int32 scalar or ``(B,)``); end-of-text
    and 0.0 for rows that are not ``live`` (bool ``(B,)``). ``logits``/``logprobs``: filtered,
    float32 ``(B, V)``. Returns int32 ``(B,)`` and float32 ``(B,)``."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample():
        step_keys = jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, temperature.shape))
        t = jnp.maximum(temperature, 1e-6)[:, None]
        sampled = jax.vmap(jax.random.categorical)(step_keys, logits / t).astype(jnp.int32)
        return jnp.where(temperature > 0, sampled, greedy)

    # Gumbel noise over the vocabulary costs more than the filters: draw it only when a row samples.
    nxt = jax.lax.cond(jnp.any((temperature > 0) & live), sample, lambda: greedy)
    nxt = jnp.where(live, nxt, ids.eot)
    chosen = jnp.take_along_axis(logprobs, nxt[:, None], axis=1)[:, 0]
    return nxt, jnp.where(live, chosen, 0.0)


class LoopState(NamedTuple):
    step: jax.Array
    tokens: jax.Array
    logits: jax.Array
    sum_logprob: jax.Array
    finished: jax.Array
    key: jax.Array
    carry: object


def _sample_loop(
    ids: SpecialTokens,
    max_new_tokens: int,
    prefill_logits,
    temperature,
    keys,
    suppress_mask,
    carry,
    step_fn,
    history: History | None = None,
) -> DecodeResult:
    """The token loop shared by both decoders: filters, greedy/sampled choice, per-row stop.

    ``prefill_logits``: a pair ``(sot_logits, last_logits)``, float32 ``(B, V)`` each, the prefix's logits at
    ``<|startoftranscript|>`` (for ``no_speech_prob``) and at its last token;
    ``step_fn(carry, next_tokens (B,), step) -> (logits (B, V) float32, carry)`` runs the model;
    ``history``: see ``apply_logit_filters``.
    """
    sot_logits, last_logits = prefill_logits
    B = sot_logits.shape[0]
    no_speech = jax.nn.softmax(sot_logits, axis=-1)[:, ids.no_speech]

    def cond(s: LoopState):
        return (s.step < max_new_tokens) & ~jnp.all(s.finished)

    def body(s: LoopState):
        logits, logprobs = apply_logit_filters(s.logits, s.tokens, s.step, ids, suppress_mask, history=history)
        nxt, chosen = _next_tokens(ids, logits, logprobs, temperature, s.key, s.step, ~s.finished)
        sum_lp = s.sum_logprob + chosen
        finished = s.finished | (nxt == ids.eot)
        tokens = jax.lax.dynamic_update_slice(s.tokens, nxt[:, None], (0, s.step))
        new_logits, carry = step_fn(s.carry, nxt, s.step)
        return LoopState(s.step + 1, tokens, new_logits, sum_lp, finished, s.key, carry)

    init = LoopState(
        step=jnp.array(0, jnp.int32),
        tokens=jnp.full((B, max_new_tokens), ids.eot, jnp.int32),
        logits=last_logits,
        sum_logprob=jnp.zeros((B,), jnp.float32),
        finished=jnp.zeros((B,), bool),
        key=keys,
        carry=carry,
    )
    final = jax.lax.while_loop(cond, body, init)
    n_tokens = jnp.argmax(final.tokens == ids.eot, axis=1)
    n_tokens = jnp.where(jnp.any(final.tokens == ids.eot, axis=1), n_tokens, max_new_tokens)
    return DecodeResult(final.tokens, final.sum_logprob, n_tokens.astype(jnp.int32), no_speech)


def make_decoder(
    model, ids: SpecialTokens, max_new_tokens: int, pad_token_id: int, alignment_heads=(), kv_cache: bool = True
):
    """Build jitted ``encode`` and ``decode`` functions for an EasyDeL Whisper model.

    Returns ``(state, encode, decode, detect_language, align)`` where ``state`` is the pytree of
    weights every function takes first, and

    - ``encode(state, mel)``: mel float32 ``(B, n_mels, 3000)`` → encoder states
      ``(B, 1500, d_model)``;
    - ``decode(state, enc, prefix, prefix_mask, sot_index, temperature, keys, suppress_mask, n_hist)``:
      prefix int32 ``(B, P)`` left-padded, prefix_mask bool ``(B, P)``, sot_index int32 ``(B,)``
      (position of ``<|startoftranscript|>`` in the prefix), temperature float32 ``(B,)`` (0 =
      greedy), keys uint32 ``(B, 2)`` one PRNG key per row (so a row's samples do not depend on
      its batch-mates), n_hist int32 ``(B,)`` trailing prefix tokens the row had already sampled
      (a continuation, ``prefix_history``; 0 for a fresh decode) → ``DecodeResult``;
    - ``detect_language(state, enc)`` → float32 ``(B, V)`` log-probabilities of the first
      token after ``<|startoftranscript|>``;
    - ``align(state, enc, tokens)``: tokens int32 ``(B, L)`` teacher-forced (right-padded) →
      float32 ``(B, len(alignment_heads), L, 1500)`` cross-attention of the alignment heads
      (``[(layer, head), …]`` from the generation config), for word timestamps.

    With ``kv_cache`` and plain-array weights, ``encode``, ``decode`` and ``detect_language`` run
    ``jax_models.functional`` on the model's weights (cross-attention K/V computed once per batch,
    a self-attention KV cache); otherwise (and for EasyDeL-quantized weights) EasyDeL's own
    ``encode``/``decode`` modules. ``align`` runs EasyDeL's decoder (its ``output_attentions``;
    ``functional_decoder`` has the EasyDeL-free equivalent). Each distinct ``(B, P)`` shape
    compiles once.
    """
    from flax import nnx

    from jax_models import functional as fn

    graphdef, graphstate = nnx.split(model)
    weights = fn.whisper_weights(model) if kv_cache else None
    heads = int(model.config.decoder_attention_heads)
    enc_heads = int(model.config.encoder_attention_heads)
    state = {"model": graphstate, "fn": weights}

    @jax.jit
    def encode_easydel(state, mel):
        m = nnx.merge(graphdef, state["model"])
        with m.mesh:
            return m.encode(mel)[0]

    @jax.jit
    def detect_easydel(state, enc):
        m = nnx.merge(graphdef, state["model"])
        with m.mesh:
            sot = jnp.full((enc.shape[0], 1), ids.sot, jnp.int32)
            logits = m.decode(sot, (enc,)).logits[:, -1].astype(jnp.float32)
        return jax.nn.log_softmax(logits, axis=-1)

    align_heads = tuple((int(layer), int(head)) for layer, head in alignment_heads)

    @jax.jit
    def align(state, enc, tokens):
        m = nnx.merge(graphdef, state["model"])
        with m.mesh:
            cross = m.decode(tokens, (enc,), output_attentions=True).cross_attentions
        return jnp.stack([cross[layer][:, head] for layer, head in align_heads], axis=1).astype(jnp.float32)

    @jax.jit
    def decode_easydel(state, enc, prefix, prefix_mask, sot_index, temperature, keys, suppress_mask, n_hist):
        m = nnx.merge(graphdef, state["model"])
        P = prefix.shape[1]
        with m.mesh:
            kwargs = m.prepare_inputs_for_generation(
                prefix,
                max_length=P + max_new_tokens,
                pad_token_id=pad_token_id,
                encoder_outputs=(enc,),
                decoder_attention_mask=prefix_mask,
            )
            out = m._call_generation_model_step(m.decode, prefix, dict(kwargs))
            kwargs = m.update_inputs_for_generation(out, kwargs)
            full = out.logits.astype(jnp.float32)
            prefill = (jnp.take_along_axis(full, sot_index[:, None, None], axis=1)[:, 0], full[:, -1])

            def step(kw, nxt, i):
                o = m._call_generation_model_step(m.decode, nxt[:, None], dict(kw))
                return o.logits[:, -1].astype(jnp.float32), m.update_inputs_for_generation(o, kw)

            return _sample_loop(
                ids,
                max_new_tokens,
                prefill,
                temperature,
                keys,
                suppress_mask,
                kwargs,
                step,
                prefix_history(prefix, n_hist, ids),
            )

    if weights is None:
        return state, encode_easydel, decode_easydel, detect_easydel, align
    return (state, *functional_decoder(ids, max_new_tokens, heads, enc_heads)[:3], align)


def _prefill(state, enc, prefix, prefix_mask, sot_index, heads: int, length: int):
    """Run the left-padded prefixes through ``jax_models.functional``'s decoder into a fresh cache
    of ``length`` positions: ``(cache, (sot_logits, last_logits))``, the logits float32 ``(B, V)`` at
    ``<|startoftranscript|>`` (for ``no_speech_prob``) and at each row's last prefix token."""
    from jax_models import functional as fn

    w = state["fn"]["decoder"]
    cache = fn.init_cache(w, enc, heads, length)
    positions = jnp.cumsum(prefix_mask, axis=-1) - 1
    hidden, cache = fn.forward(w, cache, prefix, positions, jnp.int32(0), prefix_mask, heads)
    sot_hidden = jnp.take_along_axis(hidden, sot_index[:, None, None], axis=1)[:, 0]
    return cache, (fn.logits(w, sot_hidden), fn.logits(w, hidden[:, -1]))


def functional_decoder(
    ids: SpecialTokens, max_new_tokens: int, heads: int, enc_heads: int, alignment_heads=(), attention_dtype=None
):
    """``(encode, decode, detect_language, align)`` of :func:`make_decoder` over
    ``jax_models.functional``: each takes a state whose ``"fn"`` entry is the
    ``functional.whisper_weights`` pytree (the only entry they read, so they run without EasyDeL).
    ``align`` returns the cross-attention of ``alignment_heads`` (``functional.alignment_weights``),
    the same weights as EasyDeL's ``output_attentions`` (tests/test_engine.py compares them).
    ``attention_dtype``: the encoder self-attention's product dtype (``functional.encode``)."""
    from jax_models import functional as fn

    align_heads = tuple((int(layer), int(head)) for layer, head in alignment_heads)

    @jax.jit
    def align_fn(state, enc, tokens):
        if not align_heads:
            raise ValueError("no alignment heads given")
        return fn.alignment_weights(state["fn"]["decoder"], enc, tokens, heads, align_heads)

    @jax.jit
    def encode_fn(state, mel):
        return fn.encode(state["fn"]["encoder"], mel, enc_heads, attention_dtype)

    @jax.jit
    def detect_fn(state, enc):
        w = state["fn"]["decoder"]
        B = enc.shape[0]
        cache = fn.init_cache(w, enc, heads, 1)
        sot = jnp.full((B, 1), ids.sot, jnp.int32)
        hidden, _ = fn.forward(w, cache, sot, jnp.zeros((B, 1), jnp.int32), jnp.int32(0), jnp.ones((B, 1), bool), heads)
        return jax.nn.log_softmax(fn.logits(w, hidden[:, -1]), axis=-1)

    @jax.jit
    def decode_fn(state, enc, prefix, prefix_mask, sot_index, temperature, keys, suppress_mask, n_hist):
        w = state["fn"]["decoder"]
        B, P = prefix.shape
        cache, prefill = _prefill(state, enc, prefix, prefix_mask, sot_index, heads, P + max_new_tokens)
        n_real = prefix_mask.sum(axis=-1).astype(jnp.int32)
        ones = jnp.ones((B, 1), bool)

        def step(cache, nxt, i):
            h, cache = fn.forward(w, cache, nxt[:, None], (n_real + i)[:, None], P + i, ones, heads)
            return fn.logits(w, h[:, 0]), cache

        return _sample_loop(
            ids,
            max_new_tokens,
            prefill,
            temperature,
            keys,
            suppress_mask,
            cache,
            step,
            prefix_history(prefix, n_hist, ids),
        )

    return encode_fn, decode_fn, detect_fn, align_fn


class Slots(NamedTuple):
    """Device state of continuous batching (vLLM's idea, Kwon et al., SOSP 2023, "Efficient Memory
    Management for Large Language Model Serving with PagedAttention", on a fixed-size cache): ``B``
    rows, each a window at its own step; a finished row's slot takes the next window while the
    others decode on. Every array has the rows first.

    ``cache``: ``functional.KVCache`` of ``S`` = largest slot prefix + max new tokens positions;
    ``write``/``position``: int32 ``(B,)``, each row's next cache slot and learned position;
    ``step``: int32 ``(B,)``, tokens sampled so far; ``tokens``: int32 ``(B, max_new)``
    (end-of-text padded); ``logits``: float32 ``(B, V)`` for the next token; ``sum_logprob``,
    ``no_speech``, ``temperature``: float32 ``(B,)``; ``finished``: bool ``(B,)`` (True for an
    empty slot); ``keys``: uint32 ``(B, 2)``; ``history``: :class:`History`.
    """

    cache: object
    write: jax.Array
    position: jax.Array
    step: jax.Array
    tokens: jax.Array
    logits: jax.Array
    sum_logprob: jax.Array
    no_speech: jax.Array
    temperature: jax.Array
    finished: jax.Array
    keys: jax.Array
    history: History


def _empty_rows(rows: Slots, B: int) -> Slots:
    """``B`` free rows (zeros, finished) shaped like ``rows`` (arrays or shape structs)."""
    empty = jax.tree.map(lambda a: jnp.zeros((B, *a.shape[1:]), a.dtype), rows)
    return empty._replace(finished=jnp.ones((B,), bool))


def functional_slots(ids: SpecialTokens, max_new_tokens: int, heads: int, prefix_length: int, block: int):
    """``(empty, insert, run, grow)``: continuous batching over ``jax_models.functional``, the same
    decode as ``functional_decoder``'s (filters, sampling keys folded with each row's own step, so
    a row's tokens do not depend on which rows share its steps).

    - ``empty(state, enc_row, B)`` (``B`` static): :class:`Slots` of ``B`` empty rows; ``enc_row``
      any ``(1, 1500, d_model)`` encoder states (for shapes).
    - ``insert(state, slots, slot, enc, prefix, prefix_mask, sot_index, temperature, key, n_hist)``:
      ``slots`` with row ``slot`` (int32 scalar) starting one window: ``enc`` ``(1, 1500, d_model)``,
      the left-padded ``prefix``/``prefix_mask`` ``(1, P)`` (``P`` ≤ ``prefix_length``) and the other
      ``(1,)`` arguments of ``functional_decoder``'s ``decode``. ``slots`` is donated.
    - ``run(state, slots, suppress_mask)``: ``(slots, steps run)`` after up to ``block`` steps of
      every row (fewer when all rows finish), ``slots`` donated. A row finishes at end-of-text or
      ``max_new_tokens``.
    - ``grow(slots, B)`` (``B`` static): the same rows followed by empty ones up to ``B``.
    """
    from jax_models import functional as fn

    length = prefix_length + max_new_tokens

    @jax.jit
    def start_rows(state, enc, prefix, prefix_mask, sot_index, temperature, keys, n_hist) -> Slots:
        B, P = prefix.shape
        cache, (sot_logits, last_logits) = _prefill(state, enc, prefix, prefix_mask, sot_index, heads, length)
        return Slots(
            cache=cache,
            write=jnp.full((B,), P, jnp.int32),
            position=prefix_mask.sum(axis=-1).astype(jnp.int32),
            step=jnp.zeros((B,), jnp.int32),
            tokens=jnp.full((B, max_new_tokens), ids.eot, jnp.int32),
            logits=last_logits,
            sum_logprob=jnp.zeros((B,), jnp.float32),
            no_speech=jax.nn.softmax(sot_logits, axis=-1)[:, ids.no_speech],
            temperature=temperature,
            finished=jnp.zeros((B,), bool),
            keys=keys,
            history=prefix_history(prefix, n_hist, ids),
        )

    def empty(state, enc_row, B: int) -> Slots:
        one, i32 = jnp.ones((1, 1), bool), jnp.zeros((1,), jnp.int32)
        row = jax.eval_shape(
            start_rows,
            state,
            enc_row,
            jnp.full((1, 1), ids.sot, jnp.int32),
            one,
            i32,
            jnp.zeros((1,), jnp.float32),
            jnp.zeros((1, 2), jnp.uint32),
            i32,
        )
        return _empty_rows(row, B)

    empty = jax.jit(empty, static_argnums=2)

    def insert(state, slots, slot, enc, prefix, prefix_mask, sot_index, temperature, key, n_hist) -> Slots:
        row = start_rows(state, enc, prefix, prefix_mask, sot_index, temperature, key, n_hist)
        return jax.tree.map(lambda a, r: jax.lax.dynamic_update_slice_in_dim(a, r.astype(a.dtype), slot, 0), slots, row)

    insert = jax.jit(insert, donate_argnums=1)

    def run(state, slots: Slots, suppress_mask) -> Slots:
        w = state["fn"]["decoder"]
        B = slots.step.shape[0]
        ones = jnp.ones((B, 1), bool)

        def cond(c):
            i, s = c
            return (i < block) & ~jnp.all(s.finished)

        def body(c):
            i, s = c
            logits, logprobs = apply_logit_filters(s.logits, s.tokens, s.step, ids, suppress_mask, history=s.history)
            live = ~s.finished
            nxt, chosen = _next_tokens(ids, logits, logprobs, s.temperature, s.keys, s.step, live)
            written = fn.put_at(s.tokens, nxt[:, None], jnp.minimum(s.step, max_new_tokens - 1), axis=1)
            tokens = jnp.where(live[:, None], written, s.tokens)
            h, cache = fn.forward(w, s.cache, nxt[:, None], s.position[:, None], s.write, ones, heads)
            step = s.step + live
            return i + 1, Slots(
                cache=cache,
                write=s.write + live,
                position=s.position + live,
                step=step,
                tokens=tokens,
                logits=fn.logits(w, h[:, 0]),
                sum_logprob=s.sum_logprob + chosen,
                no_speech=s.no_speech,
                temperature=s.temperature,
                finished=s.finished | (nxt == ids.eot) | (step >= max_new_tokens),
                keys=s.keys,
                history=s.history,
            )

        steps, slots = jax.lax.while_loop(cond, body, (jnp.int32(0), slots))
        return slots, steps

    run = jax.jit(run, donate_argnums=1)

    def grow(slots: Slots, B: int) -> Slots:
        return jax.tree.map(lambda n, o: jax.lax.dynamic_update_slice_in_dim(n, o, 0, 0), _empty_rows(slots, B), slots)

    grow = jax.jit(grow, static_argnums=1)
    return empty, insert, run, grow


def compression_ratio(text: str) -> float:
    """gzip compression ratio of ``text`` (openai/whisper ``utils.compression_ratio``)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def needs_fallback(
    ratio: float,
    avg_logprob: float,
    no_speech_prob: float,
    *,
    compression_ratio_threshold: float = 2.4,
    logprob_threshold: float = -1.0,
    no_speech_threshold: float = 0.6,
) -> bool:
    """Whether a window's decode fails Whisper's thresholds and is decoded again hotter.

    openai/whisper ``transcribe.py`` (``decode_with_fallback``): a gzip compression ratio above
    ``compression_ratio_threshold`` (a loop) or an average log-probability (per sampled token,
    natural log) below ``logprob_threshold`` fails, unless the window is silent
    (``no_speech_prob`` > ``no_speech_threshold`` with the low log-probability), which is kept.
    """
    failed = ratio > compression_ratio_threshold or avg_logprob < logprob_threshold
    silent = no_speech_prob > no_speech_threshold and avg_logprob < logprob_threshold
    return failed and not silent


def pick_fallback(failed: list[bool], avg_logprobs: list[float], ratio_ok: list[bool]) -> int:
    """Index of the decode kept among one window's decodes at rising temperatures (lowest first).

    ``failed[k]`` is ``needs_fallback`` of the decode at the k-th temperature. The first decode that
    needs no fallback is kept (openai/whisper ``decode_with_fallback`` stops there), so decoding
    them all at once and picking here gives the same result as decoding them one after another.
    When every decode fails, the one with the highest average log-probability (``avg_logprobs``)
    among those whose compression ratio passed (``ratio_ok``), or among all when none did
    (faster-whisper 1.2.1 ``generate_with_fallback``; openai/whisper keeps the last, hottest
    decode, on hard audio mostly noise). Ties go to the lower temperature.

    Raises:
        ValueError: ``failed`` is empty, or the lists differ in length.
    """
    if not failed:
        raise ValueError("no decodes to choose from")
    if not (len(avg_logprobs) == len(ratio_ok) == len(failed)):
        raise ValueError("failed, avg_logprobs and ratio_ok differ in length")
    passed = next((k for k, f in enumerate(failed) if not f), None)
    if passed is not None:
        return passed
    pool = [k for k in range(len(failed)) if ratio_ok[k]] or list(range(len(failed)))
    return max(pool, key=lambda k: (avg_logprobs[k], -k))


@dataclass(frozen=True)
class RawSegment:
    """A segment of one window: times in seconds from the window's start, its tokens."""

    start: float
    end: float
    tokens: tuple[int, ...]


def split_segments(tokens: list[int], timestamp_begin: int, window_s: float) -> list[RawSegment]:
    """Cut one window's sampled tokens (EOT excluded) into segments at timestamp pairs.

    Follows openai/whisper ``transcribe.py``: consecutive timestamp tokens close one segment
    and open the next; a window with no pair is one segment up to its last timestamp (or the
    window's end); text after the last pair, never closed, runs to the window's end.
    Times are clamped to ``[0, window_s]``.
    """

    def t(tok: int) -> float:
        return min((tok - timestamp_begin) * TIME_PRECISION, window_s)

    is_ts = [tok >= timestamp_begin for tok in tokens]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    if not cuts:
        text = tuple(tok for tok in tokens if tok < timestamp_begin)
        stamps = [tok for tok in tokens if tok >= timestamp_begin]
        start = t(stamps[0]) if stamps else 0.0
        end = t(stamps[-1]) if len(stamps) > 1 else window_s
        return [RawSegment(start, max(end, start), text)] if text else []
    if len(tokens) >= 2 and not is_ts[-2] and is_ts[-1]:
        cuts.append(len(tokens))
    out: list[RawSegment] = []
    last = 0
    for cut in cuts:
        piece = tokens[last:cut]
        text = tuple(tok for tok in piece if tok < timestamp_begin)
        if text and piece[0] >= timestamp_begin:
            end_tok = piece[-1] if piece[-1] >= timestamp_begin else None
            start = t(piece[0])
            end = t(end_tok) if end_tok is not None else window_s
            out.append(RawSegment(start, max(start, end), text))
        last = cut
    rest = tokens[last:]
    text = tuple(tok for tok in rest if tok < timestamp_begin)
    if text:
        start = t(rest[0]) if rest[0] >= timestamp_begin else (out[-1].end if out else 0.0)
        out.append(RawSegment(start, window_s, text))
    return out
