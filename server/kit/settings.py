"""Settings for each server, built once (pydantic-settings) and passed into ``create_app``.

Environment variables use the ``CHORUS_`` prefix of each server (``CHORUS_WHISPER_PORT``,
``CHORUS_SIDECAR_PORT``, ``CHORUS_ROUTER_PORT`` …); the CLI's flags override them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    """``$CHORUS_CACHE_DIR``, else ``$XDG_CACHE_HOME/chorus``, else ``~/.cache/chorus``."""
    env = os.environ.get("CHORUS_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "chorus"


class ServerSettings(BaseSettings):
    """What every Chorus server shares: address, limits, keys."""

    model_config = SettingsConfigDict(env_prefix="CHORUS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer tokens; empty means no authentication.",
    )
    max_upload_mb: float = Field(25.0, gt=0, description="Largest accepted upload (MB, 10^6 bytes).")
    max_audio_s: float = Field(4 * 3600.0, gt=0, description="Longest accepted audio (seconds).")
    max_concurrent: int = Field(16, ge=1, description="Requests processed at once.")
    max_queue: int = Field(64, ge=0, description="Requests waiting beyond max_concurrent before 429.")
    request_timeout_s: float = Field(600.0, gt=0, description="Per-request deadline (504 after it).")
    decode_timeout_s: float = Field(
        120.0, gt=0, description="Deadline for decoding one upload (s); a file that takes longer is a 400."
    )
    shutdown_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM/SIGINT: stop accepting, let requests in flight finish for at most this long (s), "
        "then cancel what is left and exit 0.",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir)
    log_level: str = "info"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


class WhisperSettings(ServerSettings):
    """The whisper server (``chorus serve whisper``)."""

    model_config = SettingsConfigDict(env_prefix="CHORUS_WHISPER_", extra="ignore")

    port: int = 8001
    model: str = Field("base", description="'base', 'small', a local HF or CT2 directory, or a hub id.")
    served_model_names: list[str] = Field(
        default_factory=lambda: ["whisper-1"],
        description="Extra names accepted in the request's `model` field (OpenAI clients send whisper-1).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["none", "int8", "nf4", "affine4", "mxfp8"] = Field(
        "none",
        description="int8: int8 weights and activations (faster where the CPU has AMX/VNNI int8 units; "
        "bench/NOTES.md); nf4/affine4/mxfp8: EasyDeL's weight quantization.",
    )
    batch_size: int = Field(8, ge=1, description="Largest batch of 30 s windows decoded together.")
    engine_workers: int = Field(2, ge=1, description="Batches run at once (scheduler threads of the engine).")
    max_new_tokens: int = Field(224, ge=1, le=448)
    beam_size: int = Field(1, ge=1)
    temperature_fallback: bool = Field(
        True,
        description="For requests with temperature 0: decode a window whose compression ratio > 2.4 or average "
        "log-probability < -1 again at 0.2 ... 1.0 (openai/whisper's rule). False keeps the greedy decode, as "
        "faster-whisper's BatchedInferencePipeline does: up to 6x less decoding on audio that fails the thresholds "
        "(repeated text, noise), at the words the fallback would have recovered.",
    )
    warmup: bool = True
    background_compile: bool = Field(
        True,
        description="Ready once the smallest batch is compiled; larger batches, long prompts and word alignment "
        "compile in a background thread (requests meanwhile run at the compiled sizes). False: compile all first.",
    )


class RouterSettings(ServerSettings):
    """The router (``chorus serve router``): the public entry point in front of both backends.

    Every field can be set as ``CHORUS_ROUTER_<FIELD>`` (``CHORUS_ROUTER_WHISPER_URL=http://gpu1:8001``).
    """

    model_config = SettingsConfigDict(env_prefix="CHORUS_ROUTER_", extra="ignore")

    port: int = 8000
    whisper_url: str = Field("http://127.0.0.1:8001", description="Base URL of the whisper server.")
    sidecar_url: str = Field("http://127.0.0.1:8002", description="Base URL of the torch sidecar.")
    backend_api_key: str | None = Field(None, description="Bearer token sent to both backends.")
    whisper_concurrency: int = Field(8, ge=1, description="Chunk requests in flight to the whisper server.")
    sidecar_concurrency: int = Field(2, ge=1, description="Requests in flight to the sidecar.")
    whisper_timeout_s: float = Field(300.0, gt=0, description="Deadline of one chunk at the whisper server.")
    sidecar_timeout_s: float = Field(
        300.0, gt=0, description="Deadline of one diarization request, plus the duration of the audio it carries."
    )
    connect_timeout_s: float = Field(5.0, gt=0)
    whisper_model: str = Field(
        "whisper-1", description="Model name sent to the whisper server for requests naming a diarize model."
    )
    diarize_model_names: list[str] = Field(
        default_factory=lambda: ["gpt-4o-transcribe-diarize"],
        description="Request `model` names that mean 'transcribe with the whisper server, diarize'.",
    )
    diarize_formats: list[str] = Field(
        default_factory=lambda: ["diarized_json", "verbose_json", "srt", "vtt"],
        description="response_formats that carry speakers when the model is a diarize model (the sidecar is "
        "skipped for the others, and for every other model).",
    )
    max_chunk_s: float = Field(30.0, gt=1, le=30, description="Longest chunk sent to the whisper server.")
    diarization_window_s: float | None = Field(
        None,
        ge=1,
        description="Longest audio (s) the sidecar diarizes in one call: consecutive chunks up to this length go "
        "together. None: the sidecar's own max_window_s (GET /v1/models), 30 s when it reports none; a number caps it.",
    )
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="silero-vad speech probability ('auto').")
    vad_silence_ms: int = Field(500, ge=0, description="Least pause that ends a speech region ('auto').")
    vad_padding_ms: int = Field(300, ge=0, description="Audio kept before and after speech ('auto').")
    link_threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Cosine similarity above which two chunk-local speakers are one person; None: by embedder "
        "(0.66 CAM++, 0.50 TitaNet).",
    )
    known_speaker_threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Least cosine similarity to name a speaker after a reference clip; None: by embedder.",
    )
    ready_poll_s: float = Field(2.0, gt=0, description="Seconds between backend /ready checks.")
