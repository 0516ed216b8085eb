"""Pydantic request models at the HTTP edge, in OpenAI's field order.

Requests own their conversion (``to_options``), as in vLLM's speech-to-text entry point.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from server.kit.errors import InvalidRequestError

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]
TimestampGranularity = Literal["word", "segment"]

# ISO-639-1 codes Whisper knows (openai/whisper tokenizer.LANGUAGES keys).
WHISPER_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th "
    "ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr "
    "pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt "
    "haw ln ha ba jw su yue"
).split()


class TranscriptionRequest(BaseModel):
    """The form fields of ``POST /v1/audio/transcriptions`` (the ``file`` part is handled apart)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., max_length=256)
    language: str | None = Field(None, max_length=16)
    prompt: str | None = Field(None, max_length=4096)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[TimestampGranularity] = Field(default_factory=lambda: ["segment"])
    stream: bool = False
    chunking_strategy: str | None = None
    known_speaker_names: list[str] = Field(default_factory=list)
    known_speaker_references: list[str] = Field(default_factory=list)

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        code = v.strip().lower()
        if code not in WHISPER_LANGUAGES:
            raise ValueError(f"'{v}' is not a supported ISO-639-1 language code")
        return code


class TranslationRequest(TranscriptionRequest):
    """The form fields of ``POST /v1/audio/translations`` (no ``language``, no diarized output)."""

    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"


LIST_FIELDS = {"timestamp_granularities", "known_speaker_names", "known_speaker_references"}


def parse_form(model: type[BaseModel], fields: list[tuple[str, str]]) -> BaseModel:
    """Build ``model`` from multipart text fields (``name`` or ``name[]`` for lists).

    Raises:
        InvalidRequestError: with ``param`` naming the first offending field.
    """
    data: dict[str, object] = {}
    for key, value in fields:
        name = key[:-2] if key.endswith("[]") else key
        if name in LIST_FIELDS:
            data.setdefault(name, [])
            data[name].append(value)  # type: ignore[union-attr]
        elif name in data:
            raise InvalidRequestError(f"Field '{name}' was given more than once.", param=name)
        else:
            data[name] = value
    if "stream" in data:
        data["stream"] = str(data["stream"]).lower() in ("1", "true", "yes", "on")
    return validate(model, data)


def validate(model: type[BaseModel], data: object) -> BaseModel:
    """``model.model_validate(data)``, its first error turned into a 400 naming the field.

    Raises:
        InvalidRequestError: ``param`` is the field's dotted path (``messages.0.role``).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "missing":
            msg = f"Missing required parameter: '{param}'."
        elif first["type"] == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: '{param}'."
        else:
            msg = f"Invalid value for '{param}': {first['msg']}."
        raise InvalidRequestError(msg, param=param) from None
