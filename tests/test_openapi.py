"""``/openapi.json`` on each server: it describes exactly the routes served, stays open with API keys
on, and a bounded schemathesis run against the whisper server (tiny model) finds no 5xx and no
response that strays from the document (status codes, media types, bodies, headers)."""

from __future__ import annotations

import itertools

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from server.core.audio import to_wav_bytes
from server.kit.settings import RouterSettings, WhisperSettings

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


def whisper(engine=None, **overrides):
    from jax_models.whisper_app import create_app

    return create_app(WhisperSettings(model="tiny", warmup=False, **overrides), engine=engine or object())


def router(**overrides):
    from server.router.app import create_app
    from tests.test_router import EnergyVad

    return create_app(RouterSettings(**overrides), vad=EnergyVad())


def sidecar(**overrides):
    from torch_models.settings import SidecarSettings
    from torch_models.sidecar_app import create_app

    return create_app(SidecarSettings(**overrides), diarizer=object())


def served(app) -> set[tuple[str, str]]:
    import re

    return {(m, re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path)) for r in app.routes if isinstance(r, Route)
            for m in r.methods if m != "HEAD"}


@pytest.mark.parametrize("factory", [whisper, router, sidecar], ids=["whisper", "router", "sidecar"])
async def test_the_document_describes_exactly_the_routes_served(factory):
    app = factory(api_keys=["k1"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get("/openapi.json")  # no key: the document is open like /health
        assert r.status_code == 200
        doc = r.json()
        assert (await http.get("/v1/models")).status_code == 401
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served(app)
    assert doc["security"] == [{"bearer": []}]
    for path, ops in doc["paths"].items():
        for _method, op in ops.items():
            if path in ("/health", "/ready", "/metrics", "/openapi.json"):
                assert op["security"] == []
            else:
                assert "401" in op["responses"]
            for status, resp in op["responses"].items():
                if int(status) >= 400 and status != "503" or path.startswith("/v1/audio") and int(status) >= 400:
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    # every $ref resolves
    refs = {v.rsplit("/", 1)[-1] for v in _values(doc, "$ref")}
    assert refs <= set(doc["components"]["schemas"])


def _values(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            else:
                yield from _values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v, key)


def test_the_audio_endpoints_are_multipart_with_the_form_fields_the_server_validates():
    from jax_models.whisper_app import api_doc as whisper_doc
    from server.router.app import api_doc as router_doc

    def form(doc) -> dict:
        op = doc.document(secured=False)["paths"]["/v1/audio/transcriptions"]["post"]
        return op["requestBody"]["content"]["multipart/form-data"]["schema"]

    whisper_form = form(whisper_doc(["whisper-1"]))
    assert whisper_form["required"] == ["file", "model"]
    assert whisper_form["properties"]["file"]["format"] == "binary"
    assert set(whisper_form["properties"]) == {"file", "model", "language", "prompt", "response_format",
                                               "temperature", "timestamp_granularities"}
    props = whisper_form["properties"]
    assert props["response_format"]["enum"] == ["json", "text", "srt", "vtt", "verbose_json"]
    assert props["temperature"]["minimum"] == 0 and props["temperature"]["maximum"] == 1
    assert props["model"]["enum"] == ["whisper-1"]
    router_props = form(router_doc(RouterSettings()))["properties"]
    assert "diarized_json" in router_props["response_format"]["enum"]
    assert {"stream", "chunking_strategy", "known_speaker_names", "known_speaker_references"} <= set(router_props)


def test_an_undocumented_route_is_refused_at_build_time():
    from server.kit.app import ServerState, build_app
    from server.kit.openapi import ApiDoc

    async def extra(request):
        return None

    with pytest.raises(ValueError, match="undocumented"):
        build_app(ServerState("x"), WhisperSettings(), [Route("/v1/extra", extra, methods=["POST"])], None,
                  ApiDoc("x"))


async def test_405_keeps_the_allow_header_and_the_openai_shape():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=whisper()), base_url="http://t") as http:
        r = await http.get("/v1/audio/transcriptions")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


# ---------------------------------------------------------------------------------------------
# schemathesis against the whisper server on the tiny model


def test_schemathesis_whisper_server(tiny_engine, speech_samples):
    """Every operation of the document, ``EXAMPLES`` generated cases each (schemathesis' strategies under
    Hypothesis; its pytest plugin's lazy fixture loader does not run under this pytest)."""
    app = whisper(tiny_engine, max_upload_mb=2.0)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    wav = to_wav_bytes(speech_samples[: 16000 * 3])
    seen: dict[str, set[int]] = {}

    turn = itertools.count()

    @schema.hook
    def map_body(ctx, body):
        """Every other generated upload carries real speech, so the 200 paths (every format) are checked too."""
        if isinstance(body, dict) and "file" in body and next(turn) % 2 == 0:
            return {**body, "file": wav}
        return body

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/models/{model}"} <= {o.path for o in operations}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES.get(operation.path, 5), deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(checks=CHECKS)
            seen.setdefault(f"{operation.method.upper()} {operation.path}", set()).add(  # noqa: B023 (run now)
                response.status_code)

        run()
    audio = seen["POST /v1/audio/transcriptions"]
    assert 200 in audio and 400 in audio, seen  # both real speech and rejected input were exercised


EXAMPLES = {"/v1/audio/transcriptions": 40, "/v1/audio/translations": 15}
