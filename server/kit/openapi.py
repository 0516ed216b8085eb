"""OpenAPI 3.1 documents of the Chorus servers, served at ``GET /openapi.json``.

Request bodies come from the same pydantic models the routes validate with (``server.kit.protocol``,
``torch_models.protocol``), so a field added there shows up here. Every route of an app must be
described: ``build_app`` refuses to build an app with an undocumented route (``ApiDoc.check``).
Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every 4xx/5xx
status an operation can answer.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence

from pydantic import BaseModel

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

ERROR_STATUS = {
    400: "A field is missing, malformed or out of range, or the audio cannot be decoded (`param` names the field).",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`).",
    404: "Unknown model.",
    413: "The upload is larger than the limit.",
    415: "The body is not of the media type this endpoint takes.",
    429: "Too many requests in flight and queued; retry after `Retry-After` seconds.",
    502: "A backend failed.",
    503: "Not ready (model loading or warming up), or a backend is down; retry after `Retry-After` seconds.",
    504: "The request took longer than the server's deadline.",
}

SCHEMAS: dict[str, dict] = {
    "Error": {
        "type": "object",
        "description": "OpenAI's error shape.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "examples": ["invalid_request_error", "server_error"]},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Usage": {
        "type": "object",
        "required": ["type", "seconds"],
        "properties": {"type": {"const": "duration"}, "seconds": {"type": "number", "minimum": 0}},
    },
    "Word": {
        "type": "object",
        "required": ["word", "start", "end"],
        "properties": {"word": {"type": "string"}, "start": {"type": "number"}, "end": {"type": "number"}},
    },
    "Segment": {
        "type": "object",
        "required": ["id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                     "compression_ratio", "no_speech_prob"],
        "properties": {
            "id": {"type": "integer"},
            "seek": {"type": "integer"},
            "start": {"type": "number", "description": "seconds"},
            "end": {"type": "number", "description": "seconds"},
            "text": {"type": "string"},
            "tokens": {"type": "array", "items": {"type": "integer"}},
            "temperature": {"type": "number"},
            "avg_logprob": {"type": "number"},
            "compression_ratio": {"type": "number"},
            "no_speech_prob": {"type": "number"},
            "speaker": {"type": "string", "description": "router, speaker-carrying formats only"},
            "confidence": {"type": "number", "description": "router: speaker assignment confidence"},
            "words": {"type": "array", "items": {"$ref": REF.format(model="Word")}},
        },
    },
    "Transcription": {
        "type": "object",
        "description": "response_format=json",
        "required": ["text"],
        "properties": {
            "text": {"type": "string"},
            "usage": {"$ref": REF.format(model="Usage")},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TranscriptionVerbose": {
        "type": "object",
        "description": "response_format=verbose_json",
        "required": ["task", "language", "duration", "text", "segments"],
        "properties": {
            "task": {"enum": ["transcribe", "translate"]},
            "language": {"type": "string"},
            "duration": {"type": "number", "description": "seconds"},
            "text": {"type": "string"},
            "segments": {"type": "array", "items": {"$ref": REF.format(model="Segment")}},
            "words": {"type": "array", "items": {"$ref": REF.format(model="Word")}},
            "usage": {"$ref": REF.format(model="Usage")},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TranscriptionDiarized": {
        "type": "object",
        "description": "response_format=diarized_json (router)",
        "required": ["duration", "task", "text", "segments"],
        "properties": {
            "duration": {"type": "number"},
            "task": {"const": "transcribe"},
            "text": {"type": "string"},
            "segments": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "start", "end", "speaker", "text", "type"],
                "properties": {
                    "id": {"type": "string"}, "start": {"type": "number"}, "end": {"type": "number"},
                    "speaker": {"type": ["string", "null"]}, "text": {"type": "string"},
                    "type": {"const": "transcript.text.segment"}, "confidence": {"type": "number"},
                },
            }},
            "usage": {"$ref": REF.format(model="Usage")},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                       "owned_by": {"type": "string"}},
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": REF.format(model="Model")}}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "server"],
        "properties": {"status": {"const": "ok"}, "server": {"type": "string"}},
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "server", "detail"],
        "properties": {"ready": {"type": "boolean"}, "server": {"type": "string"}, "detail": {"type": "string"}},
    },
}


def ref(name: str) -> dict:
    """``{"$ref": "#/components/schemas/<name>"}``."""
    return {"$ref": REF.format(model=name)}


def json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def text_content(*media_types: str) -> dict:
    """Plain-text bodies (``text/plain``, ``text/vtt`` …), each a string."""
    return {m: {"schema": {"type": "string"}} for m in media_types}


def _strip_null(schema: dict) -> dict:
    """A form field is sent or not: drop the ``null`` branch pydantic writes for ``X | None``."""
    branches = schema.get("anyOf")
    if branches:
        rest = [b for b in branches if b.get("type") != "null"]
        if len(rest) == 1:
            out = {k: v for k, v in schema.items() if k != "anyOf"}
            out.update(rest[0])
            if out.get("default", 0) is None:
                del out["default"]
            return out
    return schema


class ApiDoc:
    """An OpenAPI document being assembled: operations, component schemas, security.

    Args:
        title: the server's name in ``info.title``.
        version: the API's version (the package's).
        description: Markdown shown by OpenAPI viewers.
    """

    def __init__(self, title: str, version: str = "0.1.0", description: str = "") -> None:
        self.title = title
        self.version = version
        self.description = description
        self.paths: dict[str, dict[str, dict]] = {}
        self.schemas: dict[str, dict] = copy.deepcopy(SCHEMAS)
        self.open_operations: set[tuple[str, str]] = set()

    # -- schema helpers ---------------------------------------------------------------------
    def model_schema(self, model: type[BaseModel]) -> dict:
        """``model``'s JSON schema; nested models land in ``components.schemas``."""
        schema = model.model_json_schema(ref_template=REF)
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        return schema

    def form_body(
        self,
        model: type[BaseModel],
        *,
        file: str | None = "file",
        file_description: str = "the audio file (wav, flac, mp3, m4a, ogg, webm, mp4: anything libav decodes)",
        include: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        overrides: dict[str, dict] | None = None,
    ) -> dict:
        """A ``multipart/form-data`` request body: the ``file`` part plus ``model``'s fields as text parts.

        Args:
            model: the pydantic model ``parse_form`` validates the text fields with.
            file: the file part's name (required), or None for a form without a file.
            include, exclude: fields of ``model`` to describe (all by default).
            overrides: per field, JSON-schema keys that replace pydantic's (an ``enum`` of what this
                server accepts, ``examples``).
        """
        schema = self.model_schema(model)
        keep = set(include) if include is not None else set(schema.get("properties", {}))
        keep -= set(exclude)
        props: dict[str, dict] = {}
        if file:
            props[file] = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                           "description": file_description}
        for name, prop in schema.get("properties", {}).items():
            if name in keep:
                prop = _strip_null(prop)
                prop.pop("title", None)
                prop.update((overrides or {}).get(name, {}))
                props[name] = prop
        required = ([file] if file else []) + [n for n in schema.get("required", []) if n in keep]
        body = {"type": "object", "required": required, "properties": props}
        encoding = {n: {"style": "form", "explode": True} for n, p in props.items() if p.get("type") == "array"}
        media: dict = {"schema": body}
        if encoding:
            media["encoding"] = encoding
        return {"required": True, "content": {"multipart/form-data": media}}

    def json_body(self, model: type[BaseModel]) -> dict:
        """An ``application/json`` request body validated by ``model``."""
        return {"required": True, "content": json_content(self.model_schema(model))}

    # -- operations ---------------------------------------------------------------------------
    def add(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        ok: dict | None = None,
        ok_status: int = 200,
        errors: Sequence[int] = (),
        body: dict | None = None,
        parameters: Sequence[dict] = (),
        open: bool = False,
        headers: dict | None = None,
        extra: dict[int, dict] | None = None,
    ) -> None:
        """Describe ``method path``.

        Args:
            summary: one line.
            ok: the success response's ``content`` (media type → schema).
            errors: HTTP statuses answered with the ``Error`` body (see ``ERROR_STATUS``).
            body: the request body (``form_body`` / ``json_body``).
            parameters: path and query parameters.
            open: no API key needed (health, readiness, metrics, this document).
            extra: more responses by status, as OpenAPI response objects.
        """
        words = [w.strip("{}").replace("-", "_").replace(".", "_") for w in path.split("/") if w]
        op: dict = {"summary": summary, "operationId": "_".join([method.lower(), *words])}
        if parameters:
            op["parameters"] = list(parameters)
        if body is not None:
            op["requestBody"] = body
        responses: dict[str, dict] = {str(ok_status): {"description": "OK", **({"content": ok} if ok else {})}}
        for status in errors:
            resp = {"description": ERROR_STATUS[status], "content": json_content(ref("Error"))}
            if status in (429, 503, 504):
                resp["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
            responses[str(status)] = resp
        for status, resp in (extra or {}).items():
            responses[str(status)] = resp
        op["responses"] = responses
        if open:
            self.open_operations.add((method.upper(), path))
        self.paths.setdefault(path, {})[method.lower()] = op

    def operations(self) -> set[tuple[str, str]]:
        """``{(METHOD, path)}`` described so far."""
        return {(m.upper(), p) for p, ops in self.paths.items() for m in ops}

    def check(self, routes: Iterable[tuple[str, Iterable[str]]]) -> None:
        """Raise ``ValueError`` unless the ``(path, methods)`` of ``routes`` and the operations agree.

        ``HEAD`` (added by Starlette to every ``GET``) is not compared; Starlette's path converters
        (``{model:path}``) are compared as plain parameters (``{model}``).
        """
        served = {(m.upper(), re.sub(r"\{(\w+):\w+\}", r"{\1}", path))
                  for path, methods in routes for m in methods if m.upper() != "HEAD"}
        documented = self.operations()
        if served != documented:
            raise ValueError(
                f"OpenAPI document out of step with the routes: undocumented {sorted(served - documented)}, "
                f"documented but not served {sorted(documented - served)}"
            )

    def document(self, *, secured: bool) -> dict:
        """The OpenAPI 3.1 document; ``secured`` adds bearer authentication and 401 responses."""
        paths = copy.deepcopy(self.paths)
        components: dict = {"schemas": copy.deepcopy(self.schemas)}
        doc: dict = {
            "openapi": OPENAPI_VERSION,
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": components,
        }
        if secured:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                        "description": "one of the server's API keys"}}
            doc["security"] = [{"bearer": []}]
            for path, ops in paths.items():
                for method, op in ops.items():
                    if (method.upper(), path) in self.open_operations:
                        op["security"] = []
                    else:
                        op["responses"]["401"] = {"description": ERROR_STATUS[401],
                                                  "content": json_content(ref("Error"))}
        return doc


def audio_errors(*more: int) -> tuple[int, ...]:
    """The statuses every audio upload endpoint can answer (plus ``more``)."""
    return tuple(sorted({400, 404, 413, 415, 429, 503, 504, *more}))


def standard_operations(doc: ApiDoc) -> None:
    """``/health``, ``/ready``, ``/metrics`` and ``/openapi.json`` (what ``build_app`` adds to every server)."""
    doc.add("GET", "/health", summary="Liveness: the process answers.", ok=json_content(ref("Health")), open=True)
    doc.add("GET", "/ready", summary="Readiness: 200 once models are loaded and warmed up, else 503.",
            ok=json_content(ref("Ready")), open=True,
            extra={503: {"description": "Not ready yet (the body says why).", "content": json_content(ref("Ready"))}})
    doc.add("GET", "/metrics", summary="Prometheus metrics.", ok=text_content("text/plain"), open=True)
    doc.add("GET", "/openapi.json", summary="This document.", ok=json_content({"type": "object"}), open=True)


def model_operations(doc: ApiDoc) -> None:
    """``GET /v1/models`` and ``GET /v1/models/{model}`` (``server.kit.app.model_routes``)."""
    doc.add("GET", "/v1/models", summary="The models this server serves.", ok=json_content(ref("ModelList")))
    doc.add("GET", "/v1/models/{model}", summary="One model.", ok=json_content(ref("Model")), errors=(404,),
            parameters=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}])


TRANSCRIPTION_TEXT_TYPES = ("text/plain", "application/x-subrip", "text/vtt")
"""Media types of ``response_format`` text, srt and vtt (``server.core.formats``)."""
