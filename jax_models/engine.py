"""The Whisper engine: model loading (functional JAX or EasyDeL), dtype/quantization, warm-up, and a batch scheduler.

Scheduler threads (``workers``; one by default) own the device. Requests (any number of threads)
split their audio into 30 s windows and submit them; the scheduler gathers windows from every
in-flight request into fixed-shape batches (batch buckets × prefix buckets, compiled at warm-up as
whisper-jax does), so throughput grows with concurrency and no request compiles anything; on the
functional backend decode rows are refilled as windows finish (continuous batching, ``_Session``). A
window whose transcript stops early is decoded on from its own tokens on the encoder states it
already has (``WhisperEngine._tail_job``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from jax_models.alignment import TimedWord, fit_to_segment, median_word_duration, word_timings
from jax_models.decoding import (
    RawSegment,
    SpecialTokens,
    WhisperTokenizer,
    compression_ratio,
    functional_decoder,
    functional_slots,
    make_decoder,
    needs_fallback,
    pick_fallback,
    split_segments,
)
from jax_models.features import LogMel
from server.core.audio import SAMPLE_RATE, duration_s
from server.core.transcript import Segment, Transcript, Word
from server.core.windows import plan_windows

log = logging.getLogger("chorus.engine")

PREFIX_BUCKETS = (8, 64, 224)
"""Decoder prefix lengths compiled: task tokens alone; a continuation (or a short prompt); a long prompt."""
MAX_PROMPT_TOKENS = PREFIX_BUCKETS[-1] - 8
ALIGN_LENGTH = 232
"""Teacher-forced length for word alignment: 4 task tokens + up to 224 text tokens + EOT, padded."""
TAIL_MIN_S = 1.0
"""A window whose transcript ends this many seconds before the window does is continued."""
CONTINUE_BUCKET = 64
SLOT_PREFIX = PREFIX_BUCKETS[1]
"""Windows whose prefix fits this bucket (task tokens, a continuation, a short prompt) decode by
continuous batching on the functional backend (``WhisperEngine._run``); longer prompts, language
detection and alignment run as fixed batches between its blocks."""
SLOT_BLOCK = 2
"""Decode steps between two looks at the slots (finished rows out, waiting windows in)."""
"""Prefix length of a continuation: task tokens + the window's last sampled tokens (its context)."""
QUANTIZATION_PATTERN = r"^(?!.*(?:embedding|norm|lm_head|proj_out|embed_positions)).*$"
"""EasyDeL's default pattern also quantizes Whisper's output projection, whose 51865 rows (51866 in
large-v3) do not divide into quantization groups (easydel 0.3.0); keep it and the embeddings in
full precision."""


def alignment_heads(model_config, generation_config) -> list[tuple[int, int]]:
    """``[(decoder layer, head), …]`` whose cross-attention aligns tokens to audio.

    The generation config's ``alignment_heads`` where they fit the model; otherwise every head of
    the upper half of the decoder, openai/whisper's default for models without a list.
    """
    layers, heads = int(model_config.decoder_layers), int(model_config.decoder_attention_heads)
    listed = [(int(a), int(b)) for a, b in (getattr(generation_config, "alignment_heads", None) or [])]
    valid = [(a, b) for a, b in listed if a < layers and b < heads]
    return valid or [(a, b) for a in range(layers // 2, layers) for b in range(heads)]


def batch_buckets(batch_size: int) -> tuple[int, ...]:
    """Batch sizes compiled for ``batch_size``: powers of two below it, and itself (``8`` →
    ``(1, 2, 4, 8)``), so a batch of n windows is padded to less than 2n."""
    sizes = {batch_size}
    b = 1
    while b < batch_size:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


@dataclass(frozen=True, order=True)
class CompiledShape:
    """One executable the engine compiles: ``kind`` ``encode`` | ``detect`` | ``decode`` | ``align``,
    ``batch`` rows of 30 s windows, ``length`` the decoder prefix bucket (``decode``) or the
    teacher-forced length (``align``; 0 for the others); ``slots``: the continuous-batching
    functions of ``batch`` rows (empty, insert at each common prefix, a block of steps, and for
    the largest size growing into it)."""

    kind: str
    batch: int
    length: int = 0

    def __str__(self) -> str:
        return f"{self.kind} B={self.batch}" + (f" P={self.length}" if self.length else "")


def compile_plan(
    buckets: tuple[int, ...], align: bool = True, continuous: bool = False
) -> tuple[list[CompiledShape], list[CompiledShape]]:
    """``(ready, later)``: the executables compiled before a server is ready, and the rest in the
    order they are compiled afterwards (bench/NOTES.md, "Cold start", has what each one costs).

    ``ready`` serves any request one window at a time: the encoder (always one window), language
    detection and the decoder for the two common prefixes (task tokens alone, a continuation or a
    short prompt) at the smallest batch. ``later`` holds first what raises throughput most, the
    largest batch, then the batches between, then the rare shapes (long prompts, word alignment).
    A batch is only ever run at a compiled size (``WhisperEngine._take_batch``), so a request
    during the background compilation is split into batches of the sizes already compiled.
    ``continuous``: the two common prefixes decode in ``slots`` of each batch size instead (the
    slot functions of ``decoding.functional_slots``), not as ``decode`` batches.
    """
    small, rest = buckets[0], sorted(buckets[1:], reverse=True)
    common = PREFIX_BUCKETS[:2]

    def decoders(b: int) -> list[CompiledShape]:
        return [CompiledShape("slots", b)] if continuous else [CompiledShape("decode", b, p) for p in common]

    ready = [CompiledShape("encode", 1), CompiledShape("detect", small), *decoders(small)]
    later = [s for b in rest for s in (*decoders(b), CompiledShape("detect", b))]
    later += [CompiledShape("decode", b, p) for p in PREFIX_BUCKETS[2:] for b in buckets]
    later += [CompiledShape("align", b, ALIGN_LENGTH) for b in buckets] if align else []
    return ready, later


class EngineError(RuntimeError):
    """The engine failed to load or run a model."""


WHISPER_CONFIG_DEFAULTS = {"tie_word_embeddings": True}
"""``transformers.WhisperConfig`` defaults the engine relies on that ``config.json`` may omit."""


class _JsonConfig(SimpleNamespace):
    """A Hugging Face JSON config as attributes; a key it lacks reads as ``None`` (as an unset
    ``GenerationConfig`` field does)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _json_config(path: Path, defaults: dict | None = None) -> _JsonConfig:
    """The JSON config at ``path`` over ``defaults``.

    Raises:
        OSError: the file is missing; ``json.JSONDecodeError``: it is not JSON.
    """
    import json

    return _JsonConfig(**{**(defaults or {}), **json.loads(path.read_text(encoding="utf-8"))})


def slaney_mel_filters(n_mels: int, n_fft: int = 400, sampling_rate: int = 16000) -> np.ndarray:
    """Whisper's mel filterbank: float32 ``(n_mels, 1 + n_fft // 2)``, triangles evenly spaced on
    the Slaney mel scale from 0 to 8000 Hz, each divided by its width in Hz (Slaney's area
    normalisation). It is ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)``, which
    openai/whisper's ``mel_filters.npz`` holds, and transformers' ``mel_filter_bank(norm="slaney",
    mel_scale="slaney")`` that ``WhisperFeatureExtractor`` uses, computed here in numpy so loading
    a model imports neither (tests/test_engine.py compares them)."""
    logstep = np.log(6.4) / 27.0  # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above

    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1000.0) / 1000.0) / logstep, 3.0 * f / 200.0)

    def mel_to_hz(m):
        return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), 200.0 * m / 3.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), n_mels + 2))  # (n_mels + 2,) Hz
    fft_freqs = np.linspace(0, sampling_rate // 2, 1 + n_fft // 2)
    slopes = edges[None, :] - fft_freqs[:, None]
    widths = np.diff(edges)
    rising, falling = -slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return np.ascontiguousarray(bank.T, dtype=np.float32)


def _load_text_and_features(model_path: str):
    """``(tokenizer, generation config, mel filters (n_mels, n_freq) float32)`` of a model.

    A local directory with ``tokenizer.json`` is read with ``tokenizers`` and ``json`` alone
    (importing transformers took ~9 s of a server's start-up, bench/NOTES.md "Cold start");
    anything else (a hub id) goes through transformers' loaders.
    """
    root = Path(model_path)
    if (root / "tokenizer.json").is_file() and (root / "generation_config.json").is_file():
        fe = _json_config(root / "preprocessor_config.json", {"feature_size": 80, "n_fft": 400, "sampling_rate": 16000})
        filters = slaney_mel_filters(int(fe.feature_size), int(fe.n_fft), int(fe.sampling_rate))
        return WhisperTokenizer(root), _json_config(root / "generation_config.json"), filters
    from transformers import AutoTokenizer, GenerationConfig, WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(model_path)
    return (
        AutoTokenizer.from_pretrained(model_path),
        GenerationConfig.from_pretrained(model_path),
        np.ascontiguousarray(np.asarray(fe.mel_filters, np.float32).T),
    )


@dataclass(frozen=True)
class TranscribeOptions:
    """Per-request decoding options (openai/whisper ``DecodingOptions`` + ``transcribe`` args).

    ``temperature`` 0 means greedy with fallback to 0.2 … 1.0 when a window's
    ``compression_ratio`` > 2.4 or ``avg_logprob`` < -1.0 (all of them decoded at once, the lowest
    that passes kept; when none passes, the most probable, as faster-whisper keeps:
    ``decoding.pick_fallback``); a positive value samples at that temperature only. A window with
    ``no_speech_prob`` > 0.6 and a low ``avg_logprob`` is silent. ``temperature_fallback=False``
    keeps the greedy decode of a window that fails the thresholds (faster-whisper's
    ``temperature=[0.0]``; its ``BatchedInferencePipeline`` never falls back).
    """

    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    word_timestamps: bool = False
    without_timestamps: bool = False
    """Sample text only (``<|notimestamps|>``, openai/whisper's ``without_timestamps``): fewer
    tokens per window, and each window becomes one segment spanning it. For responses that
    return text alone (OpenAI ``json`` and ``text``)."""
    temperature_fallback: bool = True
    """With ``temperature`` 0: decode a failing window again at 0.2 … 1.0 (openai/whisper's rule).
    False: one greedy decode per window, kept whatever its compression ratio and log-probability."""

    def temperatures(self) -> tuple[float, ...]:
        """The temperatures a window may be decoded at, in the order they are tried."""
        if self.temperature > 0:
            return (self.temperature,)
        if not self.temperature_fallback:
            return (0.0,)
        return (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    def validate(self) -> None:
        """Raises ``ValueError`` for an unknown task or a temperature outside [0, 1]."""
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"unknown task {self.task!r}")
        if not 0.0 <= self.temperature <= 1.0:
            raise ValueError("temperature must be within [0, 1]")


@dataclass
class _Job:
    kind: str  # "decode" | "detect" | "align"
    features: np.ndarray  # (n_mels, 3000) float32
    prefix: list[int]
    temperature: float
    future: Future
    owner: int = 0
    """The request this window belongs to (fair scheduling across requests)."""
    submitted: float = field(default_factory=time.monotonic)
    encoded: object = None
    """The window's encoder states ``(1, 1500, d_model)`` when already computed (a continuation)."""
    history: int = 0
    """Trailing prefix tokens this window already sampled (a continuation; 0 for a fresh decode)."""

    @property
    def seed(self) -> int:
        """Sampling seed from the window's content and temperature: the same audio gives the same
        transcript whatever else is in the batch (requests are reproducible)."""
        return zlib.crc32(self.features.tobytes() + repr(self.temperature).encode()) & 0x7FFFFFFF

    @property
    def bucket(self) -> int:
        if self.kind == "align":
            return ALIGN_LENGTH
        return next(p for p in PREFIX_BUCKETS if len(self.prefix) <= p)


@dataclass(frozen=True)
class WindowResult:
    """Host-side result of one decoded window."""

    tokens: list[int]
    """Sampled text and timestamp tokens, end-of-text excluded."""
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    encoded: object = field(default=None, repr=False, compare=False)
    """The window's encoder states (device array ``(1, 1500, d_model)``), kept only until the
    transcript's tail is checked (``WhisperEngine._tail_job``)."""


FUNCTIONAL_QUANTIZATIONS = ("none", "int8")
"""Quantizations the functional backend runs itself (``int8``: ``functional.Int8Linear``)."""


def _window_result(job: _Job, tokens: list[int], sum_logprob, no_speech, encoded) -> WindowResult:
    """A decode's result: the average log-probability counts end-of-text (openai/whisper's)."""
    return WindowResult(
        tokens=tokens,
        avg_logprob=float(sum_logprob) / (len(tokens) + 1),
        no_speech_prob=float(no_speech),
        temperature=float(job.temperature),  # 0.2, not float32's 0.20000000298
        encoded=encoded,
    )


def _cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (``avx512_bf16`` or ``amx_bf16`` in its
    flags), where XLA:CPU's bfloat16 products run faster than float32 ones (bench/NOTES.md)."""
    from jax_models.compile_cache import cpu_description

    flags = set(cpu_description().rsplit("|", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


class _Session:
    """One scheduler thread's continuous batch: ``size`` rows on the device (``decoding.Slots``),
    the job each row decodes (None: free) and its encoder states (returned with the result, for
    fallback and continuation decodes)."""

    def __init__(self, engine: WhisperEngine, size: int) -> None:
        self.engine, self.size = engine, size
        self.slots = engine._slot_empty(engine._state, engine._enc_zero(), size)
        self.jobs: list[_Job | None] = [None] * size
        self.states: list = [None] * size

    @property
    def busy(self) -> int:
        """Rows decoding."""
        return sum(j is not None for j in self.jobs)

    def grow(self, size: int) -> None:
        self.slots = self.engine._slot_grow(self.slots, size)
        self.jobs += [None] * (size - self.size)
        self.states += [None] * (size - self.size)
        self.size = size

    def insert(self, job: _Job) -> None:
        """Start ``job`` in a free row (its encoder pass here unless it has encoder states)."""
        import jax.numpy as jnp

        eng = self.engine
        slot = self.jobs.index(None)
        enc = job.encoded if job.encoded is not None else eng._encode(eng._state, jnp.asarray(job.features[None]))
        prefix, mask, sot, temps, keys, n_hist = eng._decode_inputs([job], job.bucket)
        self.slots = eng._slot_insert(
            eng._state, self.slots, np.int32(slot), enc, prefix, mask, sot, temps, keys, n_hist
        )
        self.jobs[slot], self.states[slot] = job, enc

    def step(self) -> list[tuple[_Job, WindowResult]]:
        """One block of decode steps; the jobs whose rows finished, with their results (their
        rows are free again)."""
        import jax

        eng = self.engine
        self.slots, steps = eng._slot_run(eng._state, self.slots, eng._suppress)
        s = self.slots
        steps, finished, tokens, sum_lp, no_speech = (
            np.asarray(x) for x in jax.device_get((steps, s.finished, s.tokens, s.sum_logprob, s.no_speech))
        )
        with eng._cv:
            eng.decode_steps += int(steps)
        done = []
        for slot, job in enumerate(self.jobs):
            if job is None or not finished[slot]:
                continue
            row = tokens[slot]
            ends = np.flatnonzero(row == eng.ids.eot)
            toks = row[: ends[0] if len(ends) else len(row)].tolist()
            done.append((job, _window_result(job, toks, sum_lp[slot], no_speech[slot], self.states[slot])))
            self.jobs[slot] = self.states[slot] = None
        return done


class WhisperEngine:
    """Whisper (``jax_models.functional`` or EasyDeL) with batched, fixed-shape encode/decode.

    Args:
        model_path: a local Hugging Face Whisper directory or a hub id (see
            ``jax_models.ct2_import.resolve_model`` for ``base``/``small``/CT2 directories).
        dtype: ``float32``, ``bfloat16`` or ``float16`` (activations and weights).
        quantization: ``none``; ``int8``: on the functional backend int8 weights times int8
            activations quantized at run time, CTranslate2's scheme (``functional.Int8Linear``; every
            linear layer and the output projection), on EasyDeL's its int8 weights (dequantized
            before each product: memory, not speed); EasyDeL's ``nf4``, ``affine4``, ``mxfp8`` on the
            linear layers (embeddings, norms and the output projection stay in ``dtype``).
        batch_size: the largest batch of windows; ``batch_buckets(batch_size)`` are compiled.
        max_new_tokens: sampled tokens per window (Whisper's limit is 224).
        workers: batches run at once, each from its own scheduler thread (on CPU two batches
            keep both cores busier than one; see bench/NOTES.md).
        kv_cache: decode with ``jax_models.functional`` (cached cross-attention K/V and a
            self-attention KV cache); False runs EasyDeL's decode step (quantized weights always do).
        backend: ``easydel`` loads the model with EasyDeL (every option); ``functional`` reads
            ``*.safetensors`` of a local Hugging Face directory straight into
            ``jax_models.functional`` and imports neither EasyDeL nor transformers (jax, numpy,
            ``safetensors`` and ``tokenizers``): ``none`` or ``int8``, KV cache only. ``auto`` (the
            default) picks ``functional`` where it can (``none`` or ``int8``, ``kv_cache``, a local
            directory with safetensors weights), else ``easydel``; the two give the same
            transcripts and word times (they run the same kernels; tests/test_engine.py).
        continuous: on the functional backend, decode by continuous batching: a finished
            window's row takes the next waiting window between blocks of ``SLOT_BLOCK`` steps,
            instead of every batch running as many steps as its longest window (the same decode:
            tokens differ only where float results differ with the batch's shape, as between fixed
            batches of 1 and 8 rows; bench/NOTES.md "Continuous batching" has what it gains).
            False, and the EasyDeL backend, decode in fixed batches.
        encoder_attention: the functional encoder's self-attention products: ``float32`` (the
            weights' dtype), ``bfloat16`` (operands in bfloat16, float32 accumulation and softmax),
            or ``auto``: ``bfloat16`` for ``int8`` on a CPU with bfloat16 matrix instructions
            (``avx512_bf16`` or ``amx_bf16``), else the weights' dtype (bench/NOTES.md,
            "Continuous batching").

    Raises:
        EngineError: the model could not be loaded.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        quantization: str = "none",
        batch_size: int = 8,
        max_new_tokens: int = 224,
        kv_cache: bool = True,
        workers: int = 1,
        backend: str = "auto",
        continuous: bool = True,
        encoder_attention: str = "auto",
    ) -> None:
        import jax.numpy as jnp

        if backend not in ("auto", "easydel", "functional"):
            raise ValueError(f"unknown backend {backend!r}")
        if backend == "auto":
            local = any(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else False
            backend = "functional" if quantization in FUNCTIONAL_QUANTIZATIONS and kv_cache and local else "easydel"
        self.model_path = model_path
        self.dtype = dtype
        self.quantization = quantization
        self.max_new_tokens = max_new_tokens
        self.batch_buckets = batch_buckets(batch_size)
        try:
            self.tokenizer, self.generation_config, mel_filters = _load_text_and_features(model_path)
        except Exception as exc:
            raise EngineError(f"could not load tokenizer/config from {model_path!r}: {exc}") from exc
        self.log_mel = LogMel(mel_filters)
        self.ids = SpecialTokens.from_pretrained(self.tokenizer, self.generation_config)
        jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[dtype]
        if backend == "functional" and (quantization not in FUNCTIONAL_QUANTIZATIONS or not kv_cache):
            raise EngineError(
                f"the functional backend runs {' or '.join(FUNCTIONAL_QUANTIZATIONS)} weights with the KV cache only"
            )
        self.backend = backend
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.ids.eot
        self.pad_token_id = int(pad)
        if backend == "functional":
            self.model, weights = self._load_functional(model_path, jdtype)
            if quantization == "int8":
                from jax_models.functional import quantize_int8

                weights = quantize_int8(weights)
            cfg = self.model.config
            self.alignment_heads = alignment_heads(cfg, self.generation_config)
            self._state = {"fn": weights}
            if encoder_attention == "auto":
                encoder_attention = "bfloat16" if quantization == "int8" and _cpu_has_bf16() else "float32"
            if encoder_attention not in ("float32", "bfloat16"):
                raise ValueError(f"unknown encoder_attention {encoder_attention!r}")
            self.encoder_attention = encoder_attention
            self._encode, self._decode, self._detect, self._align = functional_decoder(
                self.ids,
                max_new_tokens,
                int(cfg.decoder_attention_heads),
                int(cfg.encoder_attention_heads),
                self.alignment_heads,
                jnp.bfloat16 if encoder_attention == "bfloat16" else None,
            )
            self._slot_empty, self._slot_insert, self._slot_run, self._slot_grow = functional_slots(
                self.ids, max_new_tokens, int(cfg.decoder_attention_heads), SLOT_PREFIX, SLOT_BLOCK
            )
        else:
            self.encoder_attention = dtype
            self.model = self._load(model_path, jdtype, quantization)
            self.alignment_heads = alignment_heads(self.model.config, self.generation_config)
            self._state, self._encode, self._decode, self._detect, self._align = make_decoder(
                self.model, self.ids, max_new_tokens, self.pad_token_id, self.alignment_heads, kv_cache=kv_cache
            )
        self.kv_cache = self._state["fn"] is not None
        self.continuous = continuous and backend == "functional"
        vocab = int(self.model.config.vocab_size)
        mask = np.zeros((vocab,), bool)
        mask[[t for t in self.ids.suppress if t < vocab]] = True
        self._suppress = jnp.asarray(mask)
        self._queue: deque[_Job] = deque()
        self._served: dict[int, int] = {}  # request → number of the last batch that served it
        self._batch_no = 0
        self._owners = itertools.count(1)
        self._cv = threading.Condition()
        self._stop = False
        self._compiled: frozenset[CompiledShape] = frozenset()  # replaced whole, so read without the lock
        self.compile_log: list[tuple[CompiledShape, float]] = []
        """``(shape, seconds)`` of each executable compiled so far (tracing, lowering and XLA)."""
        self.compiled_all = threading.Event()
        # set while warmup(background=True) compiles the larger batches: batches are then taken at
        # compiled sizes only; without any warm-up every bucket is compiled on first use, as before
        self._compiling_in_background = False
        """Set once every shape of ``compile_plan`` is compiled (``warmup``)."""
        self._threads = [
            threading.Thread(target=self._run, name=f"chorus-whisper-scheduler-{i}", daemon=True)
            for i in range(workers)
        ]
        self.batches_run = 0
        self.decode_steps = 0
        """Decoder steps run, each over every row of its batch or slots (finished rows too)."""
        self._fallback_decodes: Counter[float] = Counter()
        self._fallback_kept: Counter[float] = Counter()
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _load_functional(model_path: str, jdtype):
        """``(namespace with .config, functional weights)`` from a local HF directory, without
        EasyDeL or transformers."""

        from safetensors.numpy import load_file

        from jax_models.functional import weights_from_hf

        files = sorted(Path(model_path).glob("*.safetensors"))
        try:
            config = _json_config(Path(model_path) / "config.json", WHISPER_CONFIG_DEFAULTS)
            state = {k: v for f in files for k, v in load_file(f).items()}
        except Exception as exc:
            raise EngineError(f"could not load Whisper model {model_path!r}: {exc}") from exc
        weights = weights_from_hf(state, config, jdtype) if files else None
        if weights is None:
            raise EngineError(f"{model_path!r} holds no complete Whisper safetensors checkpoint")
        return SimpleNamespace(config=config), weights

    @staticmethod
    def _load(model_path: str, jdtype, quantization: str):
        import easydel as ed

        kwargs = {}
        if quantization != "none":
            from easydel.layers.quantization import QuantizationConfig

            qtype = {"int8": "int8", "nf4": "nf4", "affine4": "affine", "mxfp8": "mxfp8"}[quantization]
            qkw = {"bits": 4} if quantization == "affine4" else {}
            kwargs = dict(
                quantization_config=QuantizationConfig(dtype=qtype, pattern=QUANTIZATION_PATTERN, **qkw),
                apply_quantization=True,
            )
        try:
            return ed.AutoEasyDeLModelForSpeechSeq2Seq.from_pretrained(
                model_path, dtype=jdtype, param_dtype=jdtype, auto_shard_model=False, **kwargs
            )
        except Exception as exc:
            raise EngineError(f"could not load Whisper model {model_path!r}: {exc}") from exc

    # ------------------------------------------------------------------ scheduler
    def close(self) -> None:
        """Stop the scheduler thread (pending jobs fail with ``EngineError``)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _submit(self, job: _Job) -> Future:
        return self._submit_all([job])[0]

    def _submit_all(self, jobs: list[_Job]) -> list[Future]:
        """Queue ``jobs`` at once (the scheduler sees all of them or none)."""
        with self._cv:
            if self._stop:
                raise EngineError("engine is closed")
            self._queue.extend(jobs)
            self._cv.notify()
        return [job.future for job in jobs]

    def _take_batch(
        self, accept: Callable[[_Job], bool] | None = None, limit: int | None = None, mixed: bool = False
    ) -> list[_Job]:
        """The next batch: requests take turns, least recently served first.

        The request served longest ago (a new one counts as never served) gives the batch its
        first window, which fixes the batch's kind and prefix bucket; then every request with a
        matching window adds its oldest one, in the same order, round after round, until the batch
        is full. A window therefore waits for at most ``ceil(active requests / largest batch)``
        batches once it is its request's oldest, however many windows other requests queued:
        a short request is not starved behind a long one.

        ``accept``: only jobs it accepts are taken; ``mixed``: of any kind and bucket (continuous
        batching's rows), else of the first one's kind and bucket; at most ``limit``, by default a
        compiled batch size.
        """
        owners: dict[int, list[_Job]] = {}
        for job in self._queue:
            if accept is None or accept(job):
                owners.setdefault(job.owner, []).append(job)
        order = sorted(owners, key=lambda o: self._served.get(o, -1))  # stable: ties keep queue order
        first = owners[order[0]][0]
        lanes = [[j for j in owners[o] if mixed or (j.kind == first.kind and j.bucket == first.bucket)] for o in order]
        if limit is None:
            limit = (
                max(self._compiled_sizes(first) or self.batch_buckets[:1])
                if self._compiling_in_background
                else self.batch_buckets[-1]
            )
        batch: list[_Job] = []
        depth = 0
        while len(batch) < limit and any(depth < len(lane) for lane in lanes):
            for lane in lanes:
                if depth < len(lane) and len(batch) < limit:
                    batch.append(lane[depth])
            depth += 1
        taken = {id(j) for j in batch}
        remaining = [j for j in self._queue if id(j) not in taken]
        self._queue.clear()
        self._queue.extend(remaining)
        self._batch_no += 1
        for job in batch:
            self._served[job.owner] = self._batch_no
        live = {j.owner for j in self._queue} | {j.owner for j in batch}
        for owner in [o for o in self._served if o not in live]:  # finished requests
            del self._served[owner]
        return batch

    def _slotted(self, job: _Job) -> bool:
        """Whether ``job`` decodes in continuous-batching slots (else in a fixed batch)."""
        return self.continuous and job.kind == "decode" and job.bucket <= SLOT_PREFIX

    def _slot_sizes(self) -> list[int]:
        """Slot counts a session can have now: the compiled ones while the rest compile."""
        if not self._compiling_in_background:
            return list(self.batch_buckets)
        return [b for b in self.batch_buckets if CompiledShape("slots", b) in self._compiled] or [self.batch_buckets[0]]

    def _run(self) -> None:
        """A scheduler thread: fixed batches (``_take_batch`` → ``_run_batch``) and, with
        ``continuous``, one ``_Session`` of slots whose rows are refilled between blocks."""
        session: _Session | None = None
        while True:
            batch: list[_Job] = []
            fill: list[_Job] = []
            size = 0
            with self._cv:
                while not self._queue and not self._stop and not (session and session.busy):
                    self._cv.wait()
                if self._stop:
                    for job in [*self._queue, *(session.jobs if session else [])]:
                        if job is not None and not job.future.done():
                            job.future.set_exception(EngineError("engine closed"))
                    self._queue.clear()
                    return
                slotted = [j for j in self._queue if self._slotted(j)]
                if len(slotted) < len(self._queue):  # detection, alignment, long prompts: between blocks
                    batch = self._take_batch(accept=lambda j: not self._slotted(j))
                elif slotted:
                    sizes = self._slot_sizes()
                    busy = session.busy if session else 0
                    want = min(busy + len(slotted), sizes[-1])
                    size = next(b for b in sizes if b >= want)
                    if session is not None and busy:  # grow only into the largest (compiled) size
                        size = session.size if size <= session.size else sizes[-1]
                    if size > busy:
                        fill = self._take_batch(accept=self._slotted, limit=size - busy, mixed=True)
                        if not busy:
                            self.batches_run += 1
            if batch:
                self._run_fixed(batch)
                continue
            try:
                if fill:
                    if session is None or not session.busy or size > session.size:
                        session = self._open_session(session, size)
                    for job in fill:
                        session.insert(job)
                if session is not None and session.busy:
                    for job, res in session.step():
                        job.future.set_result(res)
            except Exception as exc:  # a failed session fails its own jobs only
                log.exception("continuous batch failed")
                for job in [*(session.jobs if session else []), *fill]:
                    if job is not None and not job.future.done():
                        job.future.set_exception(EngineError(f"decoding failed: {exc}"))
                session = None

    def _enc_zero(self):
        """Zero encoder states ``(1, frames, d_model)`` (shapes for empty slots)."""
        if getattr(self, "_enc_zero_row", None) is None:
            import jax
            import jax.numpy as jnp

            mel = jax.ShapeDtypeStruct((1, int(self.model.config.num_mel_bins), 3000), jnp.float32)
            out = jax.eval_shape(self._encode, self._state, mel)
            self._enc_zero_row = jnp.zeros(out.shape, out.dtype)
        return self._enc_zero_row

    def _open_session(self, session: _Session | None, size: int) -> _Session:
        """A session of ``size`` slots: ``session`` grown (its rows kept) or a new, empty one."""
        if session is not None and session.busy:
            session.grow(size)
            return session
        if session is not None and session.size == size:
            return session  # every row finished: the slots are free already
        return _Session(self, size)

    def _run_fixed(self, batch: list[_Job]) -> None:
        try:
            results = self._run_batch(batch)
            for job, res in zip(batch, results):
                job.future.set_result(res)
        except Exception as exc:  # a failed batch fails its own jobs only
            log.exception("batch of %d failed", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(EngineError(f"decoding failed: {exc}"))

    def _shape(self, job: _Job, batch: int) -> CompiledShape:
        return CompiledShape(job.kind, batch, 0 if job.kind == "detect" else job.bucket)

    def _compiled_sizes(self, job: _Job) -> list[int]:
        """Batch sizes already compiled for ``job``'s kind and prefix bucket, ascending. Batches
        are taken and padded to these while the others compile (``warmup(background=True)``);
        with none, the smallest bucket is compiled on first use."""
        return [b for b in self.batch_buckets if self._shape(job, b) in self._compiled]

    def _run_batch(self, batch: list[_Job]) -> list:
        import jax
        import jax.numpy as jnp

        n = len(batch)
        size = next(b for b in (*self._compiled_sizes(batch[0]), *self.batch_buckets) if b >= n)
        rows = batch + [batch[0]] * (size - n)
        # Each real window is encoded alone (one compiled shape): the encoder is compute-bound, a
        # batched (B, heads, 1500, 1500) attention falls out of cache (1.1 s per window at B=4-8 vs
        # 0.5-0.6 s alone, bench/NOTES.md), and padding rows reuse the first window's states
        # instead of paying for an encoder pass.
        states = [
            j.encoded if j.encoded is not None else self._encode(self._state, jnp.asarray(j.features[None]))
            for j in batch
        ]
        enc = jnp.concatenate(states + [states[0]] * (size - n), axis=0)
        with self._cv:
            self.batches_run += 1
        if batch[0].kind == "detect":
            logprobs = np.asarray(jax.device_get(self._detect(self._state, enc)))
            return [logprobs[i] for i in range(n)]
        if batch[0].kind == "align":
            tokens = np.full((size, ALIGN_LENGTH), self.ids.eot, np.int32)
            for i, job in enumerate(rows):
                tokens[i, : len(job.prefix)] = job.prefix[:ALIGN_LENGTH]
            weights = np.asarray(jax.device_get(self._align(self._state, enc, jnp.asarray(tokens))))
            return [weights[i] for i in range(n)]
        prefix, mask, sot, temps, keys, n_hist = (jnp.asarray(a) for a in self._decode_inputs(rows, batch[0].bucket))
        out = self._decode(self._state, enc, prefix, mask, sot, temps, keys, self._suppress, n_hist)
        tokens, sum_lp, n_tok, no_speech = (np.asarray(x) for x in jax.device_get(out))
        with self._cv:  # the loop stops once every row has sampled end-of-text
            self.decode_steps += int(min(self.max_new_tokens, n_tok.max() + 1))
        return [
            _window_result(batch[i], tokens[i, : n_tok[i]].tolist(), sum_lp[i], no_speech[i], states[i])
            for i in range(n)
        ]

    def _decode_inputs(self, rows: list[_Job], P: int) -> tuple[np.ndarray, ...]:
        """The decoders' per-row inputs of ``rows`` (numpy): ``(prefix, prefix_mask, sot_index,
        temperature, keys, n_hist)``, each prefix left-padded to ``P``."""
        import jax

        prefix = np.full((len(rows), P), self.pad_token_id, np.int32)
        mask = np.zeros((len(rows), P), bool)
        sot = np.zeros((len(rows),), np.int32)
        for i, job in enumerate(rows):
            k = len(job.prefix)
            prefix[i, P - k :] = job.prefix
            mask[i, P - k :] = True
            sot[i] = P - k + job.prefix.index(self.ids.sot)
        temps = np.array([j.temperature for j in rows], np.float32)
        keys = np.stack([np.asarray(jax.random.key_data(jax.random.PRNGKey(j.seed))) for j in rows])
        n_hist = np.array([j.history for j in rows], np.int32)
        return prefix, mask, sot, temps, keys, n_hist

    # ------------------------------------------------------------------ API
    def warmup(self, *, background: bool = False) -> float:
        """Compile the executables requests run (``compile_plan``) without running them.

        Args:
            background: compile only the ready set (everything a request needs at the smallest
                batch) before returning, and the rest in a daemon thread; ``compiled_all`` is set
                when it is done. False compiles everything before returning.

        Logs one line per executable with its seconds (``compile_log`` keeps them). With the
        persistent compile cache warm, "compiling" is tracing plus a cache load.

        Returns:
            The seconds spent before returning.
        """
        import jax

        t0 = time.perf_counter()
        ready, later = compile_plan(self.batch_buckets, continuous=self.continuous)
        for shape in ready:
            self._compile(shape)
        jax.random.key_data(jax.random.PRNGKey(0))  # the per-row sampling keys' small executables
        log.info(
            "warm-up: %d executables ready in %.1f s; %d more %s",
            len(ready),
            time.perf_counter() - t0,
            len(later),
            "in the background" if background else "now",
        )
        if background:
            self._compiling_in_background = True
            threading.Thread(
                target=self._compile_rest, args=(later,), name="chorus-whisper-compile", daemon=True
            ).start()
        else:
            self._compile_rest(later)
        return time.perf_counter() - t0

    def _compile_rest(self, shapes: list[CompiledShape]) -> None:
        t0 = time.perf_counter()
        for shape in shapes:
            if self._stop:
                return
            try:
                self._compile(shape)
            except Exception:  # the shape is then compiled on first use, as without warm-up
                log.exception("compiling %s failed", shape)
        # numba compiles librosa's DTW on first use (word timestamps)
        word_timings(np.ones((1, 8, 1500), np.float32), [1, 2], SAMPLE_RATE, 4, self.tokenizer.decode, "en")
        log.info(
            "warm-up: all %d executables compiled (%.1f s after the ready set)",
            len(self._compiled),
            time.perf_counter() - t0,
        )
        self._compiling_in_background = False
        self.compiled_all.set()

    def _compile(self, shape: CompiledShape) -> float:
        """Trace, lower and compile one executable (or load it from the persistent cache), and
        the small concatenation its batch runs; log its seconds. Returns the seconds."""
        import jax
        import jax.numpy as jnp

        t0 = time.perf_counter()
        cfg, B, sds = self.model.config, shape.batch, jax.ShapeDtypeStruct
        if shape.kind == "encode":
            lowered = self._encode.lower(self._state, sds((B, int(cfg.num_mel_bins), 3000), jnp.float32))
            self._enc_row = jax.tree.map(lambda a: sds((1, *a.shape[1:]), a.dtype), lowered.out_info)
        else:
            enc = sds((B, *self._enc_row.shape[1:]), self._enc_row.dtype)
            i32 = jnp.int32
            if shape.kind == "slots":
                lowered = self._lower_slots(B)
            elif shape.kind == "detect":
                lowered = self._detect.lower(self._state, enc)
            elif shape.kind == "align":
                lowered = self._align.lower(self._state, enc, sds((B, shape.length), i32))
            else:
                P = shape.length
                lowered = self._decode.lower(
                    self._state,
                    enc,
                    sds((B, P), i32),
                    sds((B, P), jnp.bool_),
                    sds((B,), i32),
                    sds((B,), jnp.float32),
                    sds((B, 2), jnp.uint32),
                    self._suppress,
                    sds((B,), i32),
                )
        t1 = time.perf_counter()
        for one in lowered if isinstance(lowered, list) else [lowered]:
            one.compile()
        if B > 1 and shape.kind != "slots":  # _run_batch joins the rows' encoder states
            row = jnp.zeros(self._enc_row.shape, self._enc_row.dtype)
            jnp.concatenate([row] * B, axis=0).block_until_ready()
        seconds = time.perf_counter() - t0
        with self._cv:
            self._compiled = self._compiled | {shape}
            self.compile_log.append((shape, seconds))
        log.info(
            "compiled %s in %.2f s (trace+lower %.2f s, XLA or cache %.2f s)",
            shape,
            seconds,
            t1 - t0,
            seconds - (t1 - t0),
        )
        return seconds

    def _lower_slots(self, B: int) -> list:
        """The lowered continuous-batching functions of ``B`` slots (``CompiledShape("slots", B)``)."""
        import jax
        import jax.numpy as jnp

        sds, i32 = jax.ShapeDtypeStruct, jnp.int32
        enc = self._enc_zero()
        empty = self._slot_empty.lower(self._state, enc, B)
        slots = empty.out_info
        out = [empty, self._slot_run.lower(self._state, slots, self._suppress)]
        for P in (p for p in PREFIX_BUCKETS if p <= SLOT_PREFIX):
            args = (sds((1, P), i32), sds((1, P), jnp.bool_), sds((1,), i32), sds((1,), jnp.float32))
            out.append(
                self._slot_insert.lower(
                    self._state, slots, sds((), i32), enc, *args, sds((1, 2), jnp.uint32), sds((1,), i32)
                )
            )
        if B == self.batch_buckets[-1]:
            for b in self.batch_buckets[:-1]:
                out.append(self._slot_grow.lower(self._slot_empty.lower(self._state, enc, b).out_info, B))
        return out

    def _align_prefix(self, language: str) -> list[int]:
        return self.ids.task_tokens(language, "transcribe") + [self.ids.no_timestamps]

    def detect_language(self, features: np.ndarray, *, owner: int = 0) -> tuple[str, float]:
        """Most likely language of one window's features ``(n_mels, 3000)``: ``(code, probability)``."""
        if not self.ids.multilingual:
            return "en", 1.0
        logprobs = self._submit(_Job("detect", features, [], 0.0, Future(), owner)).result()
        codes = list(self.ids.lang_to_id)
        lp = np.array([logprobs[self.ids.lang_to_id[c]] for c in codes])
        probs = np.exp(lp - lp.max())
        probs /= probs.sum()
        best = int(np.argmax(probs))
        return codes[best], float(probs[best])

    def prompt_tokens(self, prompt: str | None) -> list[int]:
        """``[<|startofprev|>, …last MAX_PROMPT_TOKENS prompt tokens]`` or ``[]``."""
        if not prompt or not prompt.strip():
            return []
        toks = self.tokenizer.encode(" " + prompt.strip(), add_special_tokens=False)
        return [self.ids.sot_prev] + toks[-MAX_PROMPT_TOKENS:]

    def transcribe(
        self,
        samples: np.ndarray,
        options: TranscribeOptions = TranscribeOptions(),
        progress: Callable[[float], None] | None = None,
    ) -> Transcript:
        """Transcribe (or translate) 16 kHz mono audio of any length.

        Args:
            samples: float32 ``(n,)`` at 16000 Hz.
            options: see ``TranscribeOptions``.
            progress: called with the seconds of audio finished so far.

        Returns:
            ``Transcript`` whose segments carry absolute times (seconds), tokens, temperature,
            avg_logprob, compression_ratio and no_speech_prob.

        Raises:
            ValueError: invalid options or an unknown language.
            EngineError: decoding failed.
        """
        options.validate()
        if options.language is not None and self.ids.multilingual and options.language not in self.ids.lang_to_id:
            raise ValueError(f"language {options.language!r} is not supported by this model")
        total = duration_s(samples)
        owner = next(self._owners)
        windows = plan_windows(samples)
        feats = self.log_mel([samples[a:b] for a, b in windows])
        language = options.language
        if language is None:
            language = self.detect_language(feats[0], owner=owner)[0] if total > 0 else "en"
        prefix = self.prompt_tokens(options.prompt) + self.ids.task_tokens(language, options.task)
        if options.without_timestamps:
            prefix.append(self.ids.no_timestamps)
        temperatures = options.temperatures()
        first = self._submit_all(
            [_Job("decode", feats[i], prefix, temperatures[0], Future(), owner) for i in range(len(windows))]
        )
        waiting: dict[int, list[Future]] = {i: [f] for i, f in enumerate(first)}
        hot: dict[int, list] = {}  # window → its decodes so far (T=0 first), judged, coolest first
        final: dict[int, tuple[WindowResult, str]] = {}
        tails: dict[int, Future] = {}
        done_s = 0.0
        while waiting:
            wait([f for fs in waiting.values() for f in fs if not f.done()], return_when=FIRST_COMPLETED)
            retry: dict[int, list[_Job]] = {}
            more: dict[int, _Job] = {}
            for i in [i for i, fs in waiting.items() if all(f.done() for f in fs)]:
                decodes = [f.result() for f in waiting.pop(i)]
                judged = [self._judge(res, options) for res in decodes]
                if i in hot:
                    hot[i] += judged
                elif judged[0][2] and len(temperatures) > 1:
                    hot[i] = list(judged)  # failed at the first temperature: fall back
                if i in hot:
                    failed = [f for _, _, f in hot[i]]
                    left = temperatures[len(hot[i]) :]
                    if all(failed) and left:
                        # Fallback on the encoder states already computed: the next temperatures
                        # as rows of shared batches (all of them when the device has room).
                        pending = sum(map(len, retry.values())) + len(more)
                        count = self._fallback_rows(len(left), pending)
                        retry[i] = [
                            _Job("decode", feats[i], prefix, t, Future(), owner, encoded=decodes[0].encoded)
                            for t in left[:count]
                        ]
                        self._count_fallback(left[:count])
                        continue
                    k = pick_fallback(
                        failed,
                        [r.avg_logprob for r, _, _ in hot[i]],
                        [compression_ratio(t) <= options.compression_ratio_threshold for _, t, _ in hot[i]],
                    )
                    res, text, _ = hot[i][k]
                    self._count_fallback([], kept=temperatures[k])
                else:
                    res, text, _ = judged[0]
                final[i] = (dataclasses.replace(res, encoded=None), text)
                tail = self._tail_job(samples, windows[i], final[i], res.encoded, feats[i], language, options, owner)
                if tail is not None:
                    more[i] = tail
                done_s += (windows[i][1] - windows[i][0]) / SAMPLE_RATE
                if progress:
                    progress(done_s)
            # the windows finished in this pass queue their work together, so it shares batches
            futs = iter(self._submit_all([j for jobs in retry.values() for j in jobs] + list(more.values())))
            for i, jobs in retry.items():
                waiting[i] = [next(futs) for _ in jobs]
            for i in more:
                tails[i] = next(futs)
        for i, fut in tails.items():
            final[i] = self._merge_tail(final[i], fut.result(), options)
        raws = {i: self._raw_segments(windows[i], final[i]) for i in range(len(windows))}
        words: dict[int, list[TimedWord]] = {}
        if options.word_timestamps:
            words = self._align_words(samples, windows, raws, language, owner)
        return self._assemble(windows, final, raws, words, language, options.task, total)

    def _fallback_rows(self, remaining: int, pending: int = 0) -> int:
        """How many of a window's ``remaining`` fallback temperatures to queue now.

        All of them while the device has room for them (fewer decode rows queued, counting
        ``pending`` about to be queued, than ``workers`` × the largest batch): the fallback is
        then no serial tail of one-row batches. When other windows already fill the next batches,
        the next temperature only: openai/whisper stops at the first temperature that passes, so
        a window that passes at 0.2 does not decode 0.4 … 1.0 (hot rows often sample to the token
        limit, and a batch runs as many steps as its longest row). Either way the decode kept is
        the same (``pick_fallback``; seeds depend on the window and temperature only).
        """
        room = len(self._threads) * self.batch_buckets[-1] - self._queued_decode_rows() - pending
        return max(1, min(remaining, room))

    def _queued_decode_rows(self) -> int:
        """Decode jobs waiting in the queue (every request's)."""
        with self._cv:
            return sum(1 for j in self._queue if j.kind == "decode")

    def _judge(self, res: WindowResult, options: TranscribeOptions) -> tuple[WindowResult, str, bool]:
        """``(result, text, needs_fallback)`` of one decode; a silent window's text is ``""``."""
        text = self.tokenizer.decode([t for t in res.tokens if t < self.ids.eot]).strip()
        silent = res.no_speech_prob > options.no_speech_threshold and res.avg_logprob < options.logprob_threshold
        failed = needs_fallback(
            compression_ratio(text),
            res.avg_logprob,
            res.no_speech_prob,
            compression_ratio_threshold=options.compression_ratio_threshold,
            logprob_threshold=options.logprob_threshold,
            no_speech_threshold=options.no_speech_threshold,
        )
        return res, "" if silent else text, failed

    def _count_fallback(self, decoded, kept: float | None = None) -> None:
        with self._cv:
            self._fallback_decodes.update(float(t) for t in decoded)
            if kept is not None:
                self._fallback_kept[float(kept)] += 1

    def fallback_stats(self) -> dict[str, dict[float, int]]:
        """Temperature fallback since the engine started, for ``/metrics``.

        Returns:
            ``{"decoded": {temperature: window decodes at it}, "kept": {temperature: windows that
            fell back and kept their decode at it}}`` (only windows that failed at the first
            temperature count; temperatures are floats such as 0.2).
        """
        with self._cv:
            return {"decoded": dict(self._fallback_decodes), "kept": dict(self._fallback_kept)}

    def _raw_segments(self, window: tuple[int, int], result: tuple[WindowResult, str]) -> list[RawSegment]:
        res, text = result
        if not text:
            return []
        tokens = [t for t in res.tokens if t < self.ids.eot or t >= self.ids.timestamp_begin]
        raws = split_segments(tokens, self.ids.timestamp_begin, (window[1] - window[0]) / SAMPLE_RATE)
        return [r for r in raws if self.tokenizer.decode(list(r.tokens)).strip()]

    def _align_words(self, samples, windows, raws, language: str, owner: int) -> dict[int, list[TimedWord]]:
        """Word times (seconds from each window's start) for every window with text."""
        todo = [i for i in range(len(windows)) if raws[i]]
        if not todo:  # no window has text (noise, silence): nothing to align, no empty feature batch
            return {}
        feats = self.log_mel([samples[windows[i][0] : windows[i][1]] for i in todo])
        prefix = self._align_prefix(language)
        futures = {}
        for i, f in zip(todo, feats):
            text = [t for r in raws[i] for t in r.tokens][: ALIGN_LENGTH - len(prefix) - 1]
            futures[i] = (text, self._submit(_Job("align", f, prefix + text + [self.ids.eot], 0.0, Future(), owner)))
        out = {}
        for i, (text, fut) in futures.items():
            out[i] = word_timings(
                fut.result(), text, windows[i][1] - windows[i][0], len(prefix), self.tokenizer.decode, language
            )
        return out

    def _tail_job(
        self, samples, window, result, encoded, features, language: str, options: TranscribeOptions, owner: int
    ) -> _Job | None:
        """A continuation for a window whose transcript stops early while speech goes on, or None.

        Whisper often leaves the last sentence of a 30 s window untranscribed (openai's sequential
        algorithm re-reads it from the last timestamp in the next window). Windows here are
        decoded in parallel, so when the audio after the last segment is over ``TAIL_MIN_S`` long
        and not silent (RMS over a tenth of the window's), the window is decoded on from its own
        tokens on the same encoder states, end-of-text barred at the first step: greedy, no
        prompt, no second encoder pass.
        """
        res, text = result
        if not text or encoded is None:
            return None
        a, b = window
        raws = self._raw_segments(window, result)
        if not raws:
            return None
        covered = a + int(raws[-1].end * SAMPLE_RATE)
        if (b - covered) / SAMPLE_RATE < TAIL_MIN_S:
            return None
        window_rms = float(np.sqrt(np.mean(samples[a:b] ** 2)) + 1e-9)
        if float(np.sqrt(np.mean(samples[covered:b] ** 2))) <= 0.1 * window_rms:
            return None
        task = self.ids.task_tokens(language, options.task)
        sampled = res.tokens[-(CONTINUE_BUCKET - len(task)) :]
        return _Job("decode", features, task + sampled, 0.0, Future(), owner, encoded=encoded, history=len(sampled))

    def _merge_tail(self, result: tuple[WindowResult, str], cont: WindowResult, options: TranscribeOptions):
        """The window's result with a continuation's tokens appended, when the continuation holds
        text that passes openai's checks (compression ratio, average log-probability)."""
        res, text = result
        more = self.tokenizer.decode([t for t in cont.tokens if t < self.ids.eot]).strip()
        if not more or compression_ratio(more) > options.compression_ratio_threshold:
            return result
        if cont.avg_logprob < options.logprob_threshold:
            return result
        tokens = res.tokens + cont.tokens
        return dataclasses.replace(res, tokens=tokens), f"{text} {more}"

    def _assemble(self, windows, final, raws, words, language: str, task: str, total: float) -> Transcript:
        segments: list[Segment] = []
        for i, (a, _b) in enumerate(windows):
            res, text = final[i]
            if not raws[i]:
                continue
            offset = a / SAMPLE_RATE
            ratio = compression_ratio(text)
            window_words = words.get(i, [])
            median = median_word_duration(window_words)
            last_speech = 0.0
            first = 0
            for raw in raws[i]:
                last = first + len(raw.tokens)
                mine = [w for w in window_words if first <= w.first_token < last]
                mine = fit_to_segment(mine, raw.start, raw.end, median, last_speech)
                if mine:
                    last_speech = mine[-1].end
                seg_words = tuple(Word(w.word, round(offset + w.start, 3), round(offset + w.end, 3)) for w in mine)
                first = last
                segments.append(
                    Segment(
                        id=len(segments),
                        seek=int(round(offset * 100)),
                        start=round(offset + raw.start, 3),
                        end=round(offset + raw.end, 3),
                        text=self.tokenizer.decode(list(raw.tokens)),
                        tokens=tuple(raw.tokens),
                        temperature=res.temperature,
                        avg_logprob=res.avg_logprob,
                        compression_ratio=ratio,
                        no_speech_prob=res.no_speech_prob,
                        words=seg_words,
                    )
                )
        text = "".join(s.text for s in segments).strip()
        return Transcript(text=text, segments=tuple(segments), language=language, duration=total, task=task)

    def describe(self) -> dict:
        """Model facts for ``/v1/models`` and logs."""
        cfg = self.model.config
        return {
            "path": self.model_path,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "backend": self.backend,
            "continuous_batching": self.continuous,
            "encoder_attention": self.encoder_attention,
            "batch_buckets": list(self.batch_buckets),
            "compiled": sorted(str(shape) for shape in self._compiled),
            "prefix_buckets": list(PREFIX_BUCKETS),
            "layers": [int(cfg.encoder_layers), int(cfg.decoder_layers)],
            "d_model": int(cfg.d_model),
            "n_mels": int(cfg.num_mel_bins),
            "vocab_size": int(cfg.vocab_size),
            "multilingual": self.ids.multilingual,
        }


def windows_count(duration: float) -> int:
    """Upper bound on 30 s windows for ``duration`` seconds (for progress bars)."""
    return max(1, math.ceil(duration / 30.0))
