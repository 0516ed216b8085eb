"""The sidecar's HTTP edge: pydantic request models (OpenAI field order where OpenAI has one) and
pure renderers of engine results into response bodies."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from server.kit.errors import InvalidRequestError
from server.kit.protocol import UploadForm, audio_file
from torch_models.diarization import DiarizationOptions, DiarizationResult, OptionError
from torch_models.phi4 import Generation
from torch_models.prompts import TASKS

TaskName = Literal["transcribe", "diarize", "translate", "summarize", "describe", "continue", "qa"]
assert set(TaskName.__args__) == set(TASKS)  # type: ignore[attr-defined]


class DiarizeRequest(UploadForm):
    """The form of ``POST /v1/diarize``."""

    model: str | None = Field(None, max_length=256, description="Ignored: the sidecar serves one diarizer.")
    num_speakers: int | None = Field(None, ge=1, le=64)
    min_speakers: int | None = Field(None, ge=1, le=64)
    max_speakers: int | None = Field(None, ge=1, le=64)
    response_format: Literal["json", "rttm"] = "json"
    include_probabilities: bool = False

    def to_options(self) -> DiarizationOptions:
        """The engine's options.

        Raises:
            InvalidRequestError: inconsistent speaker counts (``param`` names the field).
        """
        options = DiarizationOptions(self.num_speakers, self.min_speakers, self.max_speakers)
        try:
            return options.validate()
        except OptionError as exc:
            raise InvalidRequestError(str(exc), param=exc.param) from None


class SpeakerEmbeddingRequest(UploadForm):
    """The form of ``POST /v1/speaker-embeddings``: one clip of one speaker."""

    file: UploadFile = audio_file("One speaker's clip (at least the sidecar's min_fingerprint_s).")
    model: str | None = Field(None, max_length=256)


class Phi4TranscriptionRequest(UploadForm):
    """The form of ``POST /v1/audio/transcriptions`` on the sidecar (Phi-4 tasks).

    ``language`` is the target language of ``translate``; ``prompt`` is the question of ``qa``
    (for other tasks it is appended to the instruction as context).
    """

    model: str = Field(..., max_length=256)
    task: TaskName = "transcribe"
    template: str | None = Field(None, max_length=64)
    language: str | None = Field(None, max_length=64)
    prompt: str | None = Field(None, max_length=4096)
    response_format: Literal["json", "text"] = "json"
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False


class InputAudio(BaseModel):
    """An ``input_audio`` content part's payload (OpenAI: base64 ``data`` and its ``format``)."""

    data: str = Field(..., description="base64 of the audio file's bytes")
    format: str = Field("wav", max_length=16)


class ContentPart(BaseModel):
    """One part of a message's content: ``text``, ``input_audio`` (others are rejected by the route)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    input_audio: InputAudio | None = None


class ChatMessage(BaseModel):
    """A chat message; ``developer`` is treated as ``system``."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body (unknown OpenAI fields are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., max_length=256)
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False


# ---------------------------------------------------------------------------------------------
# Response bodies (documentation and tests: the routes return the renderers' dicts below)


class Turn(BaseModel):
    """One speaker turn (seconds) with the confidence of its speaker label in [0, 1], or null."""

    start: float
    end: float
    speaker: str
    confidence: float | None = None


class Probabilities(BaseModel):
    """Frame-level speaker activity: ``values[T][S]`` at ``frame_rate`` frames per second."""

    frame_rate: float
    speakers: list[str]
    values: list[list[float]]


class DiarizationBody(BaseModel):
    """``POST /v1/diarize`` (``response_format=json``): turns, speakers and one fingerprint per speaker."""

    duration: float
    speakers: list[str]
    segments: list[Turn]
    fingerprints: dict[str, list[float]]
    fingerprint_notes: dict[str, str]
    models: dict[str, str]
    warnings: list[str]
    probabilities: Probabilities | None = None


class SpeakerEmbedding(BaseModel):
    """``POST /v1/speaker-embeddings``: one L2-normalised fingerprint of the clip."""

    object: Literal["speaker_embedding"]
    model: str
    dim: int
    duration: float
    embedding: list[float]


class Phi4Transcription(BaseModel):
    """``POST /v1/audio/transcriptions`` with a Phi-4 model (``response_format=json``)."""

    model_config = ConfigDict(extra="allow")

    text: str
    task: TaskName
    template: str
    segments: list[dict[str, Any]] | None = None
    usage: dict[str, Any]


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: dict[str, Any]
    logprobs: None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    """OpenAI's ``chat.completion`` object."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Renderers (pure functions of engine results)


def diarization_body(result: DiarizationResult, *, include_probabilities: bool = False) -> dict[str, Any]:
    """``DiarizationResult`` → the ``/v1/diarize`` JSON body.

    ``segments`` times are seconds (3 decimals), ``confidence`` in [0, 1] or null; fingerprints
    are lists of floats; ``probabilities`` (when asked) ``{frame_rate, speakers, values[T][S]}``.
    """
    body: dict[str, Any] = {
        "duration": round(result.duration, 3),
        "speakers": list(result.speakers),
        "segments": [
            {
                "start": round(t.start, 3),
                "end": round(t.end, 3),
                "speaker": t.speaker,
                "confidence": None if t.confidence is None else round(t.confidence, 4),
            }
            for t in result.segments
        ],
        "fingerprints": {s: [round(x, 6) for x in v] for s, v in result.fingerprints.items()},
        "fingerprint_notes": dict(result.fingerprint_notes),
        "models": dict(result.models),
        "warnings": list(result.warnings),
    }
    if include_probabilities:
        p = result.probabilities
        body["probabilities"] = (
            None
            if p is None
            else {
                "frame_rate": round(p.frame_rate, 4),
                "speakers": list(p.speakers),
                "values": [[round(float(x), 4) for x in row] for row in p.values],
            }
        )
    return body


def chat_completion_body(model: str, generation: Generation) -> dict[str, Any]:
    """A ``Generation`` → OpenAI's ``chat.completion`` object."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "logprobs": None,
                "finish_reason": generation.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
    }
