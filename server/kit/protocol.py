"""Pydantic models at the HTTP edge, in OpenAI's field order: the multipart forms of the audio
endpoints (``file`` an ``UploadFile``, list fields as the OpenAI SDK sends them, ``name[]``) and
the response bodies. FastAPI validates requests with them and writes ``/openapi.json`` from them.

The response models describe what ``server.core.formats`` renders (the routes return those dicts
as they are); tests check them against openai-python's ``openai.types.audio`` types.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]
WhisperResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TimestampGranularity = Literal["word", "segment"]

# ISO-639-1 codes Whisper knows (openai/whisper tokenizer.LANGUAGES keys).
WHISPER_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th "
    "ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr "
    "pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt "
    "haw ln ha ba jw su yue"
).split()
LANGUAGE_ENUM: list[JsonValue] = [*WHISPER_LANGUAGES]

AUDIO_FILE = "The audio file (flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm: anything libav decodes)."
FORM = "multipart/form-data"
"""The media type of every upload form (``Form(media_type=FORM)``: a form model holding an
``UploadFile`` is not detected as multipart by FastAPI 0.165 on its own)."""


def audio_file(description: str = AUDIO_FILE) -> Any:
    """The ``file`` field of an upload form: binary in ``/openapi.json`` (``format: binary``)."""
    return Field(..., description=description, json_schema_extra={"format": "binary"})


def list_field(name: str, default: list[str] | None = None, description: str = "") -> Any:
    """A repeated form field, accepted as ``name[]`` (the OpenAI SDK's spelling) or ``name``."""
    return Field(
        default_factory=lambda: list(default or []),
        description=description,
        validation_alias=AliasChoices(f"{name}[]", name),
    )


class UploadForm(BaseModel):
    """Base of the upload forms: unknown fields are refused (400 "Unrecognized request argument")."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    file: UploadFile = audio_file()


class _TranscriptionFields(UploadForm):
    """The fields every transcription form shares."""

    model: str = Field(
        ..., max_length=256, description="whisper-1, or the model's configured name.", examples=["whisper-1"]
    )
    language: str | None = Field(
        None, max_length=16, description="ISO-639-1; detected when absent.", json_schema_extra={"enum": LANGUAGE_ENUM}
    )
    prompt: str | None = Field(None, max_length=4096)
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[TimestampGranularity] = list_field(
        "timestamp_granularities", ["segment"], "'word' adds word times (with verbose_json)."
    )
    include: list[str] = list_field(
        "include", description="Refused: token log-probabilities ('logprobs') are not returned (see avg_logprob)."
    )

    @field_validator("include")
    @classmethod
    def _include(cls, v: list[str]) -> list[str]:
        # OpenAI returns `logprobs` only for its gpt-4o-transcribe models; a plain "unrecognized
        # argument" would hide what the client asked for, an accepted `logprobs: null` would be a lie
        if v:
            raise ValueError(
                f"{', '.join(map(repr, v))} is not available: Chorus's Whisper returns no token "
                "log-probabilities; verbose_json gives each segment's avg_logprob"
            )
        return v

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        code = v.strip().lower()
        if code not in WHISPER_LANGUAGES:
            raise ValueError(f"'{v}' is not a supported ISO-639-1 language code")
        return code


class WhisperTranscriptionForm(_TranscriptionFields):
    """``POST /v1/audio/transcriptions`` on the whisper server (no diarization, no streaming)."""

    response_format: WhisperResponseFormat = "json"

    @field_validator("response_format", mode="before")
    @classmethod
    def _diarized(cls, v: object) -> object:
        if v == "diarized_json":
            raise ValueError(
                "'diarized_json' needs speaker diarization: call the Chorus router "
                "(chorus serve router / chorus up), not the whisper server"
            )
        return v


class TranscriptionForm(_TranscriptionFields):
    """``POST /v1/audio/transcriptions`` on the router: any length, speakers, streaming.

    The SDK's ``chunking_strategy[type]=server_vad``, ``chunking_strategy[threshold]=…`` fields are
    folded into one ``chunking_strategy`` JSON string (``"auto"`` passes through).
    """

    model: str = Field(..., max_length=256, examples=["whisper-1", "gpt-4o-transcribe-diarize"])
    response_format: ResponseFormat = "json"
    stream: bool = Field(False, description="true: Server-Sent Events (transcript.text.delta/segment/done).")
    chunking_strategy: str | None = Field(
        None,
        description="'auto', or a server_vad object as JSON (or the SDK's chunking_strategy[type]=server_vad fields).",
    )
    known_speaker_names: list[str] = list_field("known_speaker_names")
    known_speaker_references: list[str] = list_field(
        "known_speaker_references", description="data:audio/...;base64 URLs of 2-10 s clips."
    )
    num_speakers: int | None = Field(None, ge=1, le=64, description="Diarization: exactly this many speakers.")
    min_speakers: int | None = Field(None, ge=1, le=64, description="Diarization: at least this many speakers.")
    max_speakers: int | None = Field(None, ge=1, le=64, description="Diarization: at most this many speakers.")

    @model_validator(mode="before")
    @classmethod
    def _fold_chunking_strategy(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        nested = {k: v for k, v in data.items() if k.startswith("chunking_strategy[") and k.endswith("]")}
        if not nested:
            return data
        out = {k: v for k, v in data.items() if k not in nested}
        out["chunking_strategy"] = fold_chunking_strategy(nested)
        return out


def fold_chunking_strategy(fields: dict[str, Any]) -> str:
    """``{"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "0.4"}`` →
    ``'{"type": "server_vad", "threshold": 0.4}'`` (numbers parsed as JSON, ``type`` kept a string)."""
    import json

    nested: dict[str, object] = {}
    for key, value in fields.items():
        name = key[len("chunking_strategy[") : -1]
        try:
            nested[name] = value if name == "type" else json.loads(value)
        except (TypeError, ValueError):
            nested[name] = value
    return json.dumps(nested)


class TranslationForm(UploadForm):
    """``POST /v1/audio/translations``: audio in any language → English text."""

    model: str = Field(..., max_length=256, examples=["whisper-1"])
    prompt: str | None = Field(None, max_length=4096)
    response_format: WhisperResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)

    def fields(self) -> list[tuple[str, str]]:
        """The text fields as a form (the router passes them on to the whisper server)."""
        out = [
            ("model", self.model),
            ("response_format", self.response_format),
            ("temperature", repr(self.temperature)),
        ]
        return out + ([("prompt", self.prompt)] if self.prompt is not None else [])


# ---------------------------------------------------------------------------------------------
# responses


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str = Field(examples=["invalid_request_error", "server_error"])
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


class Usage(BaseModel):
    """OpenAI's ``UsageDuration``: seconds of audio, rounded up."""

    type: Literal["duration"]
    seconds: float = Field(ge=0)


class Word(BaseModel):
    """One word with its times (seconds)."""

    word: str
    start: float
    end: float


class Segment(BaseModel):
    """A verbose_json segment (OpenAI ``TranscriptionSegment``); the router adds ``speaker`` and
    ``confidence`` in speaker-carrying formats, ``words`` comes with word timestamps."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    speaker: str | None = None
    confidence: float | None = None
    words: list[Word] | None = None


class Transcription(BaseModel):
    """``response_format=json``."""

    text: str
    usage: Usage | None = None
    warnings: list[str] | None = None


class TranscriptionVerbose(BaseModel):
    """``response_format=verbose_json``."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[Segment]
    words: list[Word] | None = None
    usage: Usage | None = None
    warnings: list[str] | None = None


class DiarizedSegment(BaseModel):
    """A ``diarized_json`` segment (OpenAI ``TranscriptionDiarizedSegment``) plus its ``confidence``."""

    id: str
    start: float
    end: float
    speaker: str
    text: str
    type: Literal["transcript.text.segment"]
    confidence: float | None = None


class TranscriptionDiarized(BaseModel):
    """``response_format=diarized_json`` (router)."""

    duration: float
    task: Literal["transcribe"]
    text: str
    segments: list[DiarizedSegment]
    usage: Usage | None = None
    warnings: list[str] | None = None


class Model(BaseModel):
    """One model in OpenAI's shape; servers add their own details (``chorus``, ``status`` …)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"]
    data: list[Model]


class Health(BaseModel):
    """``GET /health``."""

    status: Literal["ok"]
    server: str


class Ready(BaseModel):
    """``GET /ready``: 200 with ``ready: true`` once warmed up, else 503 saying why."""

    ready: bool
    server: str
    detail: str
