"""Whisper's encoder and cached text decoder as plain JAX functions over the EasyDeL model's weights.

EasyDeL 0.3.0's ``WhisperAttention`` projects the encoder states through the cross-attention
``k_proj``/``v_proj`` on every call, so each decode step re-projects all 1500 encoder frames of
every layer: for ``base`` that is 2 × 6 × 1500 × 512² ≈ 4.7 G multiply-adds per row per step, ~100×
the rest of the step. This module computes those cross-attention keys/values once per batch
(``cross_kv``) and keeps a fixed-size self-attention KV cache, the standard encoder–decoder
decoding of openai/whisper (``kv_cache`` hooks) and faster-whisper (CTranslate2).

The architecture is the Hugging Face / openai Whisper decoder (Radford et al., 2022, "Robust
Speech Recognition via Large-Scale Weak Supervision"): learned positions, pre-LayerNorm blocks of
causal self-attention, cross-attention and a GELU MLP, a final LayerNorm, logits tied to the token
embedding. Matrix products run in the weights' dtype; softmax, LayerNorm statistics and logits in
float32. :func:`quantize_int8` turns every linear layer (and the output projection) into int8
weights multiplied with dynamically quantized int8 activations (:class:`Int8Linear`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LN_EPS = 1e-5
_LAYER_PARTS = {
    "sa_q": ("self_attn", "q_proj"),
    "sa_k": ("self_attn", "k_proj"),
    "sa_v": ("self_attn", "v_proj"),
    "sa_o": ("self_attn", "out_proj"),
    "ca_q": ("encoder_attn", "q_proj"),
    "ca_k": ("encoder_attn", "k_proj"),
    "ca_v": ("encoder_attn", "v_proj"),
    "ca_o": ("encoder_attn", "out_proj"),
    "fc1": ("fc1",),
    "fc2": ("fc2",),
}
_LAYER_NORMS = {"sa_ln": "self_attn_layer_norm", "ca_ln": "encoder_attn_layer_norm", "mlp_ln": "final_layer_norm"}
_ENC_PARTS = {k: v for k, v in _LAYER_PARTS.items() if not k.startswith("ca_")}
_ENC_NORMS = {k: v for k, v in _LAYER_NORMS.items() if k != "ca_ln"}


class KVCache(NamedTuple):
    """Per-layer caches of a batch (tuples with one array per decoder layer, so each is updated in
    place). ``self_k``/``self_v``: ``(B, heads, S, head_dim)``, S = prefix bucket + max new tokens;
    ``valid``: bool ``(B, S)``, False at left padding and unwritten slots; ``cross_k``/``cross_v``:
    ``(B, heads, 1500, head_dim)`` from the encoder states. Heads come before positions so each
    attention product is a plain batched matmul (no per-step transpose of the caches)."""

    self_k: tuple[jax.Array, ...]
    self_v: tuple[jax.Array, ...]
    valid: jax.Array
    cross_k: tuple[jax.Array, ...]
    cross_v: tuple[jax.Array, ...]


class Int8Linear(NamedTuple):
    """An int8 linear layer's kernel: ``q`` int8 ``(in, out)`` and ``scale`` float32 ``(out,)``,
    ``kernel ≈ q * scale`` (symmetric, one scale per output channel: ``max|column| / 127``).

    :func:`_linear` multiplies it with the activations quantized per row at run time (symmetric
    int8, ``max|row| / 127``), accumulates in int32 and rescales to float: CTranslate2's ``int8``
    compute type (faster-whisper's ``compute_type="int8"``; Klein et al., "Efficient and
    High-Quality Neural Machine Translation with OpenNMT", WNGT 2020), so a CPU with int8 matrix
    units (AVX-512 VNNI, AMX) runs the product there (bench/NOTES.md: XLA:CPU's int8 dot 10x its
    float32 one on a Xeon with AMX, 1.0x on an AVX2 EPYC).
    """

    q: jax.Array
    scale: jax.Array


def _to_int8(x, axis: int, keepdims: bool = False) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 of ``x`` with one float32 scale ``max|x| / 127`` along ``axis`` (1 where all
    values are zero): ``(q int8 shape of x, scale)``, ``x ≈ q * scale``."""
    x32 = jnp.asarray(x, jnp.float32)
    scale = jnp.max(jnp.abs(x32), axis=axis, keepdims=True) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.round(x32 / scale).astype(jnp.int8)
    return q, scale if keepdims else jnp.squeeze(scale, axis)


def _int8_kernel(w) -> Int8Linear:
    """:class:`Int8Linear` of a float ``(in, out)`` kernel: one scale per output column."""
    return Int8Linear(*_to_int8(w, axis=0))


def quantize_int8(weights: dict) -> dict:
    """The :func:`whisper_weights` pytree with every linear kernel of the encoder and decoder layers
    and the decoder's output projection as :class:`Int8Linear` (biases, LayerNorms, convolutions
    and embeddings keep their dtype).

    Returns:
        A new pytree; ``weights`` is not changed.
    """

    def layer(w: dict) -> dict:
        return {k: _int8_kernel(v) if k.endswith("_w") else v for k, v in w.items()}

    enc, dec = dict(weights["encoder"]), dict(weights["decoder"])
    enc["layers"] = [layer(w) for w in enc["layers"]]
    dec["layers"] = [layer(w) for w in dec["layers"]]
    dec["proj"] = _int8_kernel(dec["proj"])
    return {"encoder": enc, "decoder": dec}


def _flat_params(model) -> dict:
    from flax import nnx

    return {".".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _get(flat: dict, path: str):
    var = flat.get(path)
    if var is None:
        return None
    value = var.get_value()
    return value if isinstance(value, jax.Array) else None


def _layers(flat: dict, prefix: str, count: int, parts: dict, norms: dict) -> list[dict] | None:
    layers = []
    for i in range(count):
        p = f"{prefix}.layers.{i}"
        layer = {}
        for name, path in parts.items():
            base = ".".join((p, *path))
            layer[name + "_w"] = _get(flat, base + ".kernel")
            layer[name + "_b"] = _get(flat, base + ".bias")
        for name, part in norms.items():
            layer[name + "_s"] = _get(flat, f"{p}.{part}.scale")
            layer[name + "_b"] = _get(flat, f"{p}.{part}.bias")
        for key in ("sa_k_b", "ca_k_b"):  # Whisper's key projections have no bias
            if key in layer and layer[key] is None:
                del layer[key]
        if any(v is None for v in layer.values()):
            return None
        layers.append(layer)
    return layers


def whisper_weights(model) -> dict | None:
    """The weights of an EasyDeL ``WhisperForConditionalGeneration`` as a pytree of its arrays.

    ``{"encoder": {"conv1_w", "conv1_b", "conv2_w", "conv2_b", "pos", "ln_s", "ln_b", "layers"},
    "decoder": {"embed", "pos", "ln_s", "ln_b", "proj", "layers"}}``; linear kernels are
    ``(in, out)``, convolution kernels ``(width, in, out)``, ``layers`` a list of per-layer dicts.
    The arrays are the model's own (no copy), except ``proj``.

    Returns ``None`` when a weight is not a plain array (EasyDeL-quantized linears), in which case
    callers fall back to EasyDeL's own modules.
    """
    return _weights_from_flat(_flat_params(model), model.config)


class _Value:
    """An array where ``_get`` expects an ``nnx.Variable``."""

    def __init__(self, value):
        self.value = value

    def get_value(self):
        return self.value


def weights_from_hf(state_dict: dict, config, dtype=jnp.float32) -> dict | None:
    """The :func:`whisper_weights` pytree from a Hugging Face Whisper state dict, without EasyDeL.

    Args:
        state_dict: ``{name: array}`` as in ``model.safetensors`` (``model.encoder.layers.0.fc1.weight``
            …; linear weights ``(out, in)``, convolutions ``(out, in, width)``), numpy or torch-free.
        config: the model's ``transformers.WhisperConfig``.
        dtype: the weights' dtype on the device (``jnp.float32``, ``jnp.bfloat16`` …).

    Returns:
        The pytree, or ``None`` when a weight is missing.
    """
    import numpy as np

    flat = {}
    for name, array in state_dict.items():
        a = np.asarray(array)
        stem, _, kind = name.rpartition(".")
        if kind == "weight" and a.ndim == 3:  # convolution (out, in, width) -> (width, in, out)
            flat[stem + ".kernel"] = a.transpose(2, 1, 0)
        elif kind == "weight" and a.ndim == 2:
            embedding = stem.endswith(("embed_tokens", "embed_positions"))
            flat[stem + (".embedding" if embedding else ".kernel")] = a if embedding else a.T
        elif kind == "weight":  # LayerNorm
            flat[stem + ".scale"] = a
        else:
            flat[name] = a
    flat = {k: _Value(jnp.asarray(v, dtype)) for k, v in flat.items()}
    return _weights_from_flat(flat, config)


def _weights_from_flat(flat: dict, cfg) -> dict | None:
    enc, dec = "model.encoder", "model.decoder"
    enc_layers = _layers(flat, enc, int(cfg.encoder_layers), _ENC_PARTS, _ENC_NORMS)
    dec_layers = _layers(flat, dec, int(cfg.decoder_layers), _LAYER_PARTS, _LAYER_NORMS)
    encoder = {
        "conv1_w": _get(flat, f"{enc}.conv1.kernel"),
        "conv1_b": _get(flat, f"{enc}.conv1.bias"),
        "conv2_w": _get(flat, f"{enc}.conv2.kernel"),
        "conv2_b": _get(flat, f"{enc}.conv2.bias"),
        "pos": _get(flat, f"{enc}.embed_positions.embedding"),
        "ln_s": _get(flat, f"{enc}.layer_norm.scale"),
        "ln_b": _get(flat, f"{enc}.layer_norm.bias"),
    }
    decoder = {
        "embed": _get(flat, f"{dec}.embed_tokens.embedding"),
        "pos": _get(flat, f"{dec}.embed_positions.embedding"),
        "ln_s": _get(flat, f"{dec}.layer_norm.scale"),
        "ln_b": _get(flat, f"{dec}.layer_norm.bias"),
    }
    if enc_layers is None or dec_layers is None or any(v is None for v in [*encoder.values(), *decoder.values()]):
        return None
    # The output projection as its own (d_model, vocab) array: reading the tied (vocab, d_model)
    # embedding transposed made XLA:CPU copy all of it on every batched step (jax 0.9.2).
    if getattr(cfg, "tie_word_embeddings", True):
        decoder["proj"] = jnp.asarray(decoder["embed"].T.copy())
    else:
        decoder["proj"] = _get(flat, "proj_out.kernel")
        if decoder["proj"] is None:
            return None
    encoder["layers"], decoder["layers"] = enc_layers, dec_layers
    return {"encoder": encoder, "decoder": decoder}


def _layer_norm(x, scale, bias):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + LN_EPS) * scale + bias).astype(x.dtype)


def _compute_dtype(kernel, norm_scale):
    """The activations' dtype: a float kernel's own, else (int8) its layer's LayerNorm scale's."""
    return norm_scale.dtype if isinstance(kernel, Int8Linear) else kernel.dtype


def _linear(x, w, b=None):
    """``x @ w + b`` over the last axis; ``w`` a float ``(in, out)`` kernel or :class:`Int8Linear`."""
    if isinstance(w, Int8Linear):
        xq, sx = _to_int8(x, axis=-1, keepdims=True)  # one scale per row
        rows = xq.reshape(-1, xq.shape[-1])
        n = rows.shape[0]
        if n == 1:
            # XLA:CPU (jaxlib 0.9.2) runs a one-row int8 product on a slow path: 9.7 ms for the output
            # projection on the Xeon of bench/NOTES.md against 2.0 ms for two rows; give it two.
            rows = jnp.pad(rows, ((0, 1), (0, 0)))
        y = jax.lax.dot_general(rows, w.q, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
        y = y[:n].reshape(*x.shape[:-1], -1)
        y = y.astype(jnp.float32) * (sx * w.scale)
        return (y if b is None else y + b.astype(jnp.float32)).astype(x.dtype)
    y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype))
    return y if b is None else y + b.astype(x.dtype)


def _heads(x, heads):
    """``(B, T, H·d)`` → ``(B, H, T, d)``."""
    B, T, _ = x.shape
    return x.reshape(B, T, heads, -1).transpose(0, 2, 1, 3)


def _attend(q, k, v, mask, with_probs: bool = False):
    """q ``(B, H, T, d)``, k/v ``(B, H, S, d)``, mask bool ``(B, T, S)`` or None → ``(B, T, H·d)``;
    with ``with_probs`` also the float32 attention weights ``(B, H, T, S)`` (softmax over S)."""
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhts,bhsd->bthd", probs.astype(v.dtype), v)
    out = out.reshape(*out.shape[:2], -1)
    return (out, probs) if with_probs else out


def _attend_tiled(q, k, v, heads_per_tile: int = 1, queries_per_tile: int = 500, product_dtype=None):
    """Unmasked attention computed tile by tile (``heads_per_tile`` heads × ``queries_per_tile``
    queries), for the encoder's 1500 × 1500 self-attention.

    The full float32 score tensor of one window (8 × 1500 × 1500 for ``base``, 72 MB) does not stay
    in cache, so writing, normalising and reading it is memory-bound; a 1 × 500 tile (3 MB) does,
    and with one head per tile both products are plain 2-D GEMMs (XLA:CPU's batched matmul is
    slower). Each tile divides by the softmax's sum after the product with V (a ``(500, d)``
    pass instead of a ``(500, 1500)`` one). Per ``base`` layer on the development CPU: plain
    106 ms, 2 × 300 tiles 62 ms, 1 × 500 tiles 38 ms (bench/NOTES.md). Same maths as
    :func:`_attend` (exact softmax per row); shapes that do not divide fall back to it.
    ``product_dtype`` (e.g. bfloat16): both products take their operands in it and accumulate in
    float32 (the softmax stays float32).
    """
    B, H, T, d = q.shape
    if H % heads_per_tile or T % queries_per_tile:
        return _attend(q, k, v, None)
    nh, nt = H // heads_per_tile, T // queries_per_tile

    pdt = product_dtype or v.dtype
    f32 = jnp.float32

    def tile(args):
        qt, kt, vt = args  # (B, hc, tc, d), (B, hc, S, d), (B, hc, S, d)
        scores = jnp.einsum("bhtd,bhsd->bhts", qt.astype(pdt), kt.astype(pdt), preferred_element_type=f32)
        scores = scores.astype(f32) * (d**-0.5)
        e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        out = jnp.einsum("bhts,bhsd->bhtd", e.astype(pdt), vt.astype(pdt), preferred_element_type=f32)
        return (out.astype(f32) / jnp.sum(e, axis=-1, keepdims=True)).astype(v.dtype)

    qs = q.reshape(B, nh, heads_per_tile, nt, queries_per_tile, d).transpose(1, 3, 0, 2, 4, 5)
    qs = qs.reshape(nh * nt, B, heads_per_tile, queries_per_tile, d)
    ks = jnp.repeat(k.reshape(B, nh, heads_per_tile, -1, d).transpose(1, 0, 2, 3, 4), nt, axis=0)
    vs = jnp.repeat(v.reshape(B, nh, heads_per_tile, -1, d).transpose(1, 0, 2, 3, 4), nt, axis=0)
    out = jax.lax.map(tile, (qs, ks, vs))  # (nh·nt, B, hc, tc, d)
    out = out.reshape(nh, nt, B, heads_per_tile, queries_per_tile, d).transpose(2, 1, 4, 0, 3, 5)
    return out.reshape(B, T, H * d)


def encode(weights: dict, mel: jax.Array, heads: int, attention_dtype=None) -> jax.Array:
    """Whisper's audio encoder: two GELU convolutions (the second with stride 2), sinusoidal
    positions, pre-LayerNorm self-attention/MLP blocks, a final LayerNorm.

    Args:
        weights: ``whisper_weights(model)["encoder"]``.
        mel: float32 ``(B, n_mels, 3000)`` log-mel features of 30 s windows.
        attention_dtype: the self-attention products' operand dtype (``_attend_tiled``'s
            ``product_dtype``); None: the weights' dtype.

    Returns:
        ``(B, 1500, d_model)`` encoder states in the weights' dtype.
    """
    dtype = weights["conv1_w"].dtype
    x = mel.astype(dtype).transpose(0, 2, 1)  # (B, 3000, n_mels)

    def conv(x, w, b, stride):
        y = jax.lax.conv_general_dilated(x, w, (stride,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))
        return jax.nn.gelu(y + b, approximate=False)

    x = conv(x, weights["conv1_w"], weights["conv1_b"], 1)
    x = conv(x, weights["conv2_w"], weights["conv2_b"], 2)
    x = x + weights["pos"][: x.shape[1]].astype(dtype)
    for w in weights["layers"]:
        h = _layer_norm(x, w["sa_ln_s"], w["sa_ln_b"])
        q = _heads(_linear(h, w["sa_q_w"], w["sa_q_b"]), heads)
        k = _heads(_linear(h, w["sa_k_w"]), heads)
        v = _heads(_linear(h, w["sa_v_w"], w["sa_v_b"]), heads)
        x = x + _linear(_attend_tiled(q, k, v, product_dtype=attention_dtype), w["sa_o_w"], w["sa_o_b"])
        h = _layer_norm(x, w["mlp_ln_s"], w["mlp_ln_b"])
        x = x + _linear(jax.nn.gelu(_linear(h, w["fc1_w"], w["fc1_b"]), approximate=False), w["fc2_w"], w["fc2_b"])
    return _layer_norm(x, weights["ln_s"], weights["ln_b"])


def cross_kv(weights: dict, enc: jax.Array, heads: int) -> tuple[jax.Array, jax.Array]:
    """Cross-attention keys and values of every layer, once per batch.

    Args:
        weights: ``whisper_weights(model)["decoder"]``.
        enc: encoder states ``(B, 1500, d_model)``.

    Returns:
        ``(k, v)``: tuples over layers of ``(B, heads, 1500, d_model // heads)`` in the weights' dtype.
    """
    ks, vs = [], []
    for w in weights["layers"]:
        x = enc.astype(_compute_dtype(w["ca_k_w"], w["ca_ln_s"]))
        ks.append(_heads(_linear(x, w["ca_k_w"]), heads))
        vs.append(_heads(_linear(x, w["ca_v_w"], w["ca_v_b"]), heads))
    return tuple(ks), tuple(vs)


def init_cache(weights: dict, enc: jax.Array, heads: int, length: int) -> KVCache:
    """An empty self-attention cache of ``length`` positions and the batch's cross K/V."""
    ck, cv = cross_kv(weights, enc, heads)
    B, H, _, d = ck[0].shape
    zeros = tuple(jnp.zeros((B, H, length, d), ck[0].dtype) for _ in ck)
    return KVCache(zeros, zeros, jnp.zeros((B, length), bool), ck, cv)


def forward(
    weights: dict,
    cache: KVCache,
    tokens: jax.Array,
    positions: jax.Array,
    start: jax.Array,
    valid: jax.Array,
    heads: int,
) -> tuple[jax.Array, KVCache]:
    """Run ``T`` new tokens through the decoder, writing their keys/values at ``start``.

    Args:
        tokens: int32 ``(B, T)``; positions: int32 ``(B, T)`` learned-position indices (a row's
            count of real tokens before each one, so left padding does not shift them).
        start: int32 scalar, cache slot of ``tokens[:, 0]``, or ``(B,)``: each row's own slot
            (continuous batching, rows at different steps).
        valid: bool ``(B, T)``, False for left padding (never attended to).

    Returns:
        hidden states ``(B, T, d_model)`` after the final LayerNorm, and the updated cache.
    """
    hidden, cache, _ = _decoder(weights, cache, tokens, positions, start, valid, heads, ())
    return hidden, cache


def alignment_weights(
    weights: dict, enc: jax.Array, tokens: jax.Array, heads: int, alignment_heads: tuple[tuple[int, int], ...]
) -> jax.Array:
    """Cross-attention weights of the alignment heads over a teacher-forced sequence, for word
    timestamps (openai/whisper ``timing.find_alignment``: the decoder run once over the task
    tokens, the text tokens and end-of-text, its cross-attention QK softmax recorded per head).

    Args:
        weights: ``whisper_weights(model)["decoder"]``.
        enc: encoder states ``(B, 1500, d_model)``.
        tokens: int32 ``(B, L)``, each row from position 0 (causal: right padding changes nothing
            before it).
        alignment_heads: ``((decoder layer, head), …)``, e.g. the generation config's.

    Returns:
        float32 ``(B, len(alignment_heads), L, 1500)``, each row a softmax over the encoder frames.
    """
    B, L = tokens.shape
    cache = init_cache(weights, enc, heads, L)
    positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    layers = tuple(sorted({layer for layer, _ in alignment_heads}))
    _, _, probs = _decoder(weights, cache, tokens, positions, jnp.int32(0), jnp.ones((B, L), bool), heads, layers)
    return jnp.stack([probs[layer][:, head] for layer, head in alignment_heads], axis=1)


def put_at(buf: jax.Array, new: jax.Array, start: jax.Array, axis: int) -> jax.Array:
    """``buf`` with ``new`` written from index ``start`` along ``axis`` (the batch is axis 0):
    ``start`` an int32 scalar (every row at the same slot) or ``(B,)`` (each row at its own)."""
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_update_slice(buf, new, tuple(start if a == axis else 0 for a in range(buf.ndim)))

    def row(b, n, s):
        return jax.lax.dynamic_update_slice(b, n, tuple(s if a == axis - 1 else 0 for a in range(b.ndim)))

    return jax.vmap(row)(buf, new, start)


def _decoder(weights, cache, tokens, positions, start, valid, heads, cross_probs_of: tuple[int, ...]):
    """:func:`forward`, plus the cross-attention weights ``{layer: (B, heads, T, 1500)}`` of the
    layers in ``cross_probs_of`` (the computation a caller does not use is removed by XLA)."""
    dtype = _compute_dtype(weights["layers"][0]["fc1_w"], weights["layers"][0]["sa_ln_s"])
    B, T = tokens.shape
    S = cache.self_k[0].shape[2]
    x = (weights["embed"][tokens] + weights["pos"][jnp.clip(positions, 0, weights["pos"].shape[0] - 1)]).astype(dtype)
    kv_valid = put_at(cache.valid, valid, start, axis=1)
    # (1, T, S) for one slot for all rows, (B, T, S) for each row's own
    causal = jnp.arange(S)[None, None, :] <= (jnp.reshape(start, (-1, 1)) + jnp.arange(T)[None, :])[:, :, None]
    mask = kv_valid[:, None, :] & causal

    new_k, new_v, probs = [], [], {}
    for i, w in enumerate(weights["layers"]):
        h = _layer_norm(x, w["sa_ln_s"], w["sa_ln_b"])
        q = _heads(_linear(h, w["sa_q_w"], w["sa_q_b"]), heads)
        k = _heads(_linear(h, w["sa_k_w"]), heads)
        v = _heads(_linear(h, w["sa_v_w"], w["sa_v_b"]), heads)
        ks = put_at(cache.self_k[i], k, start, axis=2)
        vs = put_at(cache.self_v[i], v, start, axis=2)
        new_k.append(ks)
        new_v.append(vs)
        x = x + _linear(_attend(q, ks, vs, mask), w["sa_o_w"], w["sa_o_b"])
        h = _layer_norm(x, w["ca_ln_s"], w["ca_ln_b"])
        q = _heads(_linear(h, w["ca_q_w"], w["ca_q_b"]), heads)
        if i in cross_probs_of:
            attn, probs[i] = _attend(q, cache.cross_k[i], cache.cross_v[i], None, with_probs=True)
        else:
            attn = _attend(q, cache.cross_k[i], cache.cross_v[i], None)
        x = x + _linear(attn, w["ca_o_w"], w["ca_o_b"])
        h = _layer_norm(x, w["mlp_ln_s"], w["mlp_ln_b"])
        h = jax.nn.gelu(_linear(h, w["fc1_w"], w["fc1_b"]), approximate=False)
        x = x + _linear(h, w["fc2_w"], w["fc2_b"])
    x = _layer_norm(x, weights["ln_s"], weights["ln_b"])
    cache = cache._replace(self_k=tuple(new_k), self_v=tuple(new_v), valid=kv_valid)
    return x, cache, probs


def logits(weights: dict, hidden: jax.Array) -> jax.Array:
    """float32 ``(..., vocab)`` logits of hidden states ``(..., d_model)`` (``proj`` a float kernel or
    :class:`Int8Linear`)."""
    return _linear(hidden, weights["proj"]).astype(jnp.float32)
