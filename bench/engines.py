"""The engines a benchmark compares, each behind the same three calls: load, warm up, transcribe.

Every runner takes float32 16 kHz samples already decoded (decoding is not timed for anyone) and
returns the transcript text. Settings are chosen to decode the same way: greedy (beam 1), English
forced, timestamps predicted (except faster-whisper's batched pipeline, whose default is text
tokens only, and Chorus with ``without_timestamps``), temperature fallback 0 → 1 by 0.2, each 30 s
window decoded without the previous window's text as a prompt.

- ``chorus``: ``jax_models.engine.WhisperEngine`` (EasyDeL), the whisper server's engine.
- ``faster-whisper``: ``faster_whisper.WhisperModel`` (CTranslate2) on the CT2 files.
- ``faster-whisper-batched``: ``faster_whisper.BatchedInferencePipeline`` (Silero VAD segments,
  decoded ``batch_size`` at a time).
- ``transformers``: the ``automatic-speech-recognition`` pipeline (PyTorch), sequential long-form.
- ``easydel``: EasyDeL's stock ``vWhisperInference`` (the seed design of Chorus's engine) over the
  same Hugging Face weights: 30 s chunks with a 5 s stride each side, ``batch_size`` chunks per
  compiled greedy ``generate``, no temperature fallback, text tokens only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bench.machine import usable_cores
from server.core.audio import SAMPLE_RATE

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
KINDS = ("chorus", "faster-whisper", "faster-whisper-batched", "transformers", "easydel")


@dataclass(frozen=True)
class EngineSpec:
    """One engine configuration to benchmark.

    Attributes:
        label: the row name in tables (``"chorus fp32"``, ``"faster-whisper int8"``).
        kind: one of :data:`KINDS`.
        model: a Hugging Face Whisper directory (chorus, transformers) or a CTranslate2 directory
            holding ``model.bin`` (faster-whisper).
        params: kind-specific settings: ``dtype``, ``quantization``, ``batch_size``, ``workers``,
            ``without_timestamps`` (text tokens only), ``temperature_fallback`` (default True),
            ``compile_cache_dir`` (chorus); ``compute_type``, ``batch_size`` (faster-whisper);
            ``dtype`` (transformers); ``max_new_tokens`` (all, ``None`` = the engine's default).
    """

    label: str
    kind: str
    model: str
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (``from_json`` reverses it)."""
        return {"label": self.label, "kind": self.kind, "model": self.model, "params": dict(self.params)}

    @staticmethod
    def from_json(d: dict) -> EngineSpec:
        """The spec ``to_json`` produced."""
        return EngineSpec(d["label"], d["kind"], d["model"], dict(d.get("params") or {}))


class Runner(Protocol):
    """What every engine adapter offers; the worker times :meth:`load`, :meth:`warmup` and each
    :meth:`transcribe` separately."""

    def load(self) -> None:
        """Import the engine's library and load the weights."""

    def warmup(self, samples: np.ndarray) -> None:
        """Everything a first request would pay once (compilation, allocations): ends with one
        transcription of ``samples`` (float32, 16 kHz, shape ``(n,)``)."""

    def transcribe(self, samples: np.ndarray) -> str:
        """The transcript text of ``samples`` (float32, 16 kHz, shape ``(n,)``, any length)."""

    def close(self) -> None:
        """Release the engine (threads, temporary files)."""


class ChorusRunner:
    """Chorus's ``WhisperEngine`` in this process; ``warmup`` compiles every shape, then decodes once.

    JAX's persistent compilation cache is controlled here, because importing EasyDeL turns it on:
    ejkernel's ``ejit`` points ``jax_compilation_cache_dir`` at ``$COMPILE_FUNC_DIR`` (default
    ``~/.cache/ejkernel-cache/ejit_compiled_functions``) when its decorated functions are defined, so
    a warm-up would silently reuse whatever an earlier process compiled. Without
    ``compile_cache_dir`` the cache goes to a fresh empty directory (a cold compile, measured);
    with it, to this CPU's directory of Chorus's cache (``compile_cache.enable``, as the servers
    use it: ``<compile_cache_dir>/xla/<machine>-<digest>``). The directory used is reported in
    :attr:`compilation_cache_dir` after :meth:`load`.
    """

    def __init__(self, spec: EngineSpec, language: str | None, threads: int) -> None:
        self.spec, self.language, self.engine = spec, language, None
        self._tmp = None
        self.compilation_cache_dir: str | None = None

    def load(self) -> None:
        import tempfile
        from pathlib import Path

        import jax

        from jax_models import compile_cache

        p = self.spec.params
        if p.get("compile_cache_dir"):  # this CPU's directory, its loader lines filtered, as the servers do
            cache = compile_cache.enable(Path(p["compile_cache_dir"]))
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="chorus-bench-xla-")
            cache = Path(self._tmp.name)
            os.environ["COMPILE_FUNC_DIR"] = str(cache)  # read by ejkernel when EasyDeL is first imported
            jax.config.update("jax_compilation_cache_dir", str(cache))

        from jax_models.engine import WhisperEngine

        self.engine = WhisperEngine(
            self.spec.model,
            dtype=p.get("dtype", "float32"),
            quantization=p.get("quantization", "none"),
            batch_size=int(p.get("batch_size", 4)),
            max_new_tokens=int(p.get("max_new_tokens") or 224),
            workers=int(p.get("workers", 1)),
            continuous=bool(p.get("continuous", True)),
        )
        self.compilation_cache_dir = jax.config.jax_compilation_cache_dir
        if self.compilation_cache_dir != str(cache):
            raise RuntimeError(f"JAX compilation cache is {self.compilation_cache_dir}, expected {cache}")

    def warmup(self, samples: np.ndarray) -> None:
        self.engine.warmup()
        self.transcribe(samples)

    def transcribe(self, samples: np.ndarray) -> str:
        from jax_models.engine import TranscribeOptions

        options = TranscribeOptions(
            language=self.language,
            without_timestamps=bool(self.spec.params.get("without_timestamps")),
            temperature_fallback=bool(self.spec.params.get("temperature_fallback", True)),
        )
        return self.engine.transcribe(samples, options).text

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self._tmp is not None:
            self._tmp.cleanup()


class FasterWhisperRunner:
    """faster-whisper ``WhisperModel`` (or ``BatchedInferencePipeline`` when ``batched``) on CPU."""

    def __init__(self, spec: EngineSpec, language: str | None, threads: int, *, batched: bool = False) -> None:
        self.spec, self.language, self.threads, self.batched = spec, language, threads, batched
        self.model = self.pipeline = None

    def load(self) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        workers = int(self.spec.params.get("num_workers", 1))
        self.model = WhisperModel(
            self.spec.model,
            device="cpu",
            compute_type=self.spec.params.get("compute_type", "int8"),
            cpu_threads=max(1, self.threads // workers),
            num_workers=workers,
            local_files_only=True,
        )
        if self.batched:
            self.pipeline = BatchedInferencePipeline(model=self.model)

    def warmup(self, samples: np.ndarray) -> None:
        self.transcribe(samples)

    def transcribe(self, samples: np.ndarray) -> str:
        common = dict(
            language=self.language,
            beam_size=1,
            best_of=1,
            temperature=list(TEMPERATURES),
            max_new_tokens=self.spec.params.get("max_new_tokens"),
        )
        if self.batched:
            segments, _ = self.pipeline.transcribe(
                samples, batch_size=int(self.spec.params.get("batch_size", 4)), **common
            )
        else:
            segments, _ = self.model.transcribe(samples, condition_on_previous_text=False, vad_filter=False, **common)
        return "".join(s.text for s in segments).strip()  # the iterator is lazy: this runs the decode

    def close(self) -> None:
        self.pipeline = self.model = None


class TransformersRunner:
    """The transformers ``automatic-speech-recognition`` pipeline, PyTorch on CPU.

    Audio longer than 30 s goes through Whisper's sequential long-form ``generate`` (no
    ``chunk_length_s``): windows one after another, as openai/whisper does.
    """

    def __init__(self, spec: EngineSpec, language: str | None, threads: int) -> None:
        self.spec, self.language, self.threads, self.pipe = spec, language, threads, None

    def load(self) -> None:
        import torch
        from transformers import pipeline
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # one "max_new_tokens and max_length both set" line per window
        torch.set_num_threads(self.threads)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            self.spec.params.get("dtype", "float32")
        ]
        self.pipe = pipeline("automatic-speech-recognition", model=self.spec.model, dtype=dtype, device="cpu")

    def warmup(self, samples: np.ndarray) -> None:
        self.transcribe(samples)

    def transcribe(self, samples: np.ndarray) -> str:
        import torch

        kwargs = dict(
            task="transcribe",
            num_beams=1,
            temperature=TEMPERATURES,
            logprob_threshold=-1.0,
            compression_ratio_threshold=1.35,  # transformers measures it on tokens; 1.35 ≈ 2.4 on text
            no_speech_threshold=0.6,
            condition_on_prev_tokens=False,
        )
        if self.language:
            kwargs["language"] = self.language
        if self.spec.params.get("max_new_tokens"):
            kwargs["max_new_tokens"] = int(self.spec.params["max_new_tokens"])
        with torch.inference_mode():
            out = self.pipe(
                {"raw": samples, "sampling_rate": SAMPLE_RATE}, return_timestamps=True, generate_kwargs=kwargs
            )
        return out["text"].strip()

    def close(self) -> None:
        self.pipe = None


class EasyDeLRunner:
    """EasyDeL's ``vWhisperInference`` (easydel 0.3.0) on the Hugging Face weights, fp32.

    ``ed.vWhisperInference(model, tokenizer, processor)`` as its docstring shows; the audio goes in as
    ``{"array", "sampling_rate"}``, chunked by EasyDeL itself (30 s, stride 5 s), ``batch_size`` chunks
    per call of its compiled ``generate``. Concurrent callers share the one compiled function.
    """

    def __init__(self, spec: EngineSpec, language: str | None, threads: int) -> None:
        self.spec, self.language, self.engine = spec, language, None
        self._tmp = None

    def load(self) -> None:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="chorus-bench-easydel-xla-")
        os.environ["COMPILE_FUNC_DIR"] = self._tmp.name  # a cold compile, as for chorus (see ChorusRunner)
        import easydel as ed
        import jax
        import jax.numpy as jnp
        from transformers import WhisperProcessor, WhisperTokenizer

        jax.config.update("jax_compilation_cache_dir", self._tmp.name)
        model = ed.AutoEasyDeLModelForSpeechSeq2Seq.from_pretrained(
            self.spec.model, dtype=jnp.float32, param_dtype=jnp.float32, auto_shard_model=False
        )
        tokenizer = WhisperTokenizer.from_pretrained(self.spec.model)
        processor = WhisperProcessor.from_pretrained(self.spec.model)
        new_tokens = self.spec.params.get("max_new_tokens") or 444
        config = ed.vWhisperInferenceConfig(
            batch_size=int(self.spec.params.get("batch_size", 8)), max_length=int(new_tokens) + 4
        )  # + <|sot|><|en|><|transcribe|><|notimestamps|>
        self.engine = ed.vWhisperInference(
            model=model, tokenizer=tokenizer, processor=processor, inference_config=config, dtype=jnp.float32
        )

    def warmup(self, samples: np.ndarray) -> None:
        self.transcribe(samples)

    def transcribe(self, samples: np.ndarray) -> str:
        out = self.engine.generate(
            {"array": samples.astype(np.float32), "sampling_rate": SAMPLE_RATE},
            language=self.language,
            task="transcribe",
            return_timestamps=False,
        )
        return out["text"]

    def close(self) -> None:
        self.engine = None
        if self._tmp is not None:
            self._tmp.cleanup()


def make_runner(spec: EngineSpec, language: str | None, threads: int | None = None) -> Runner:
    """The runner for ``spec.kind`` (nothing loaded yet).

    Args:
        spec: the engine configuration.
        language: ISO-639-1 code forced on every engine, or ``None`` to let each detect it.
        threads: CPU threads for CTranslate2 and PyTorch (default: the cores this process may run on); JAX uses all cores.

    Raises:
        ValueError: unknown ``spec.kind``.
    """
    threads = threads or len(usable_cores())  # the cores this process may use (taskset)
    if spec.kind == "chorus":
        return ChorusRunner(spec, language, threads)
    if spec.kind == "faster-whisper":
        return FasterWhisperRunner(spec, language, threads)
    if spec.kind == "faster-whisper-batched":
        return FasterWhisperRunner(spec, language, threads, batched=True)
    if spec.kind == "transformers":
        return TransformersRunner(spec, language, threads)
    if spec.kind == "easydel":
        return EasyDeLRunner(spec, language, threads)
    raise ValueError(f"unknown engine kind {spec.kind!r}: {', '.join(KINDS)}")
