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
    quantization: Literal["none", "int8", "nf4", "affine4", "mxfp8"] = "none"
    batch_size: int = Field(4, ge=1, description="Largest batch of 30 s windows decoded together.")
    max_new_tokens: int = Field(224, ge=1, le=448)
    beam_size: int = Field(1, ge=1)
    warmup: bool = True
