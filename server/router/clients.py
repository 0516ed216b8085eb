"""Typed async clients for the two backends the router fans out to: the whisper server and the sidecar.

Each client bounds its requests in flight (a semaphore), applies a deadline, and retries once when
the connection could not be made or was dropped before a response (a restarted backend). Responses
become plain dataclasses; nothing above this module sees HTTP.

Errors, from the caller's point of view:

- ``BackendUnavailable``: the backend cannot be reached (after the retry), or says 503 / not ready.
- ``BackendTimeout``: no answer within the deadline.
- ``BackendRejected``: the backend answered 4xx (a client error it found: unknown model, bad language);
  it carries the backend's OpenAI-shaped error body so the router can pass it on unchanged.
- ``BackendFailed``: anything else (5xx, a malformed body).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import httpx
import numpy as np

from server.core.transcript import Segment, SpeakerTurn, Transcript, Word

log = logging.getLogger("chorus.clients")


class BackendError(Exception):
    """A backend call failed; ``backend`` is ``"whisper"`` or ``"sidecar"``."""

    def __init__(self, backend: str, message: str, *, status: int | None = None, body: dict | None = None) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.message = message
        self.status = status
        self.body = body


class BackendUnavailable(BackendError):
    """Connection refused or dropped (after one retry), or the backend answered 503."""


class BackendTimeout(BackendError):
    """The backend did not answer within the deadline."""


class BackendRejected(BackendError):
    """The backend answered 4xx; ``status`` and ``body`` are its answer."""


class BackendFailed(BackendError):
    """The backend answered 5xx (other than 503) or an unreadable body."""


RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Backend:
    """One backend: base URL, shared connection pool, concurrency bound, deadline, one retry."""

    name = "backend"

    def __init__(
        self,
        base_url: str,
        *,
        concurrency: int,
        timeout_s: float,
        connect_timeout_s: float = 5.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(
        self, path: str, *, data: list[tuple[str, str]], files: dict, timeout_s: float | None = None
    ) -> httpx.Response:
        """POST multipart with the concurrency bound, one retry on connection errors, error mapping.

        ``timeout_s`` replaces the client's read deadline for this call (seconds)."""
        timeout = (
            self._http.timeout if timeout_s is None else httpx.Timeout(timeout_s, connect=self._http.timeout.connect)
        )
        deadline = self.timeout_s if timeout_s is None else timeout_s
        form: dict[str, str | list[str]] = {}
        for key, value in data:  # httpx wants a dict; repeated keys become lists
            if key in form:
                prev = form[key]
                form[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                form[key] = value
        async with self._sem:
            for attempt in (0, 1):
                try:
                    response = await self._http.post(path, data=form, files=files, timeout=timeout)
                    break
                except RETRYABLE as exc:
                    if attempt == 0:
                        log.warning("%s %s: %s; retrying once", self.name, path, type(exc).__name__)
                        await asyncio.sleep(0.2)
                        continue
                    raise BackendUnavailable(self.name, f"cannot reach {self.base_url} ({type(exc).__name__})") from exc
                except httpx.TimeoutException as exc:
                    raise BackendTimeout(self.name, f"no answer from {self.base_url}{path} in {deadline:g} s") from exc
                except httpx.HTTPError as exc:
                    raise BackendFailed(self.name, f"{type(exc).__name__}: {exc}") from exc
        self._raise_for_status(response)
        return response

    async def get_json(self, path: str, *, timeout_s: float = 5.0) -> tuple[int, dict]:
        """``GET path`` → ``(status, json body)``; raises ``BackendUnavailable`` when unreachable."""
        try:
            r = await self._http.get(path, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(self.name, f"cannot reach {self.base_url} ({type(exc).__name__})") from exc
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, {}

    async def ready(self) -> tuple[bool, str]:
        """``(ready, detail)`` from the backend's ``/ready``."""
        try:
            status, body = await self.get_json("/ready")
        except BackendUnavailable as exc:
            return False, exc.message
        return status == 200, str(body.get("detail", status))

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": response.text[:500], "type": "server_error", "param": None, "code": None}}
        message = (body.get("error") or {}).get("message") or response.reason_phrase
        cls = BackendRejected if response.status_code < 500 else BackendFailed
        if response.status_code == 503:
            cls = BackendUnavailable
        elif response.status_code == 504:
            cls = BackendTimeout
        raise cls(self.name, message, status=response.status_code, body=body)


def _wav_file(wav: bytes, name: str = "chunk.wav") -> dict:
    return {"file": (name, wav, "audio/wav")}


class WhisperClient(_Backend):
    """The whisper server's ``/v1/audio/transcriptions`` and ``/v1/audio/translations``."""

    name = "whisper"

    async def transcribe(
        self,
        wav: bytes,
        *,
        model: str,
        task: str = "transcribe",
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        words: bool = False,
        timestamps: bool = True,
    ) -> Transcript:
        """One audio file (≤ 30 s from the router) → ``Transcript`` with times relative to its start.

        ``words`` asks for word timestamps too (the merge then assigns speakers word by word).
        ``timestamps=False`` asks for ``json``: text only, which the whisper server decodes without
        timestamp tokens (as it does for its own json/text); the ``Transcript`` then has no segments
        and its ``language`` is the one given, or ``""``.
        """
        fmt = "verbose_json" if timestamps else "json"
        data = [("model", model), ("response_format", fmt), ("temperature", str(temperature))]
        if words and timestamps:
            data += [("timestamp_granularities[]", "segment"), ("timestamp_granularities[]", "word")]
        if language and task == "transcribe":
            data.append(("language", language))
        if prompt:
            data.append(("prompt", prompt))
        path = "/v1/audio/translations" if task == "translate" else "/v1/audio/transcriptions"
        response = await self._post(path, data=data, files=_wav_file(wav))
        try:
            body = response.json()
            if timestamps:
                return transcript_from_verbose(body, task=task)
            if not isinstance(body.get("text"), str):
                raise TypeError("no text")
            return Transcript(text=body["text"], segments=(), language=language or "", duration=0.0, task=task)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendFailed(self.name, f"malformed {fmt}: {exc}") from exc

    async def forward(
        self, path: str, fields: list[tuple[str, str]], filename: str, data: bytes, content_type: str | None
    ) -> httpx.Response:
        """Pass a request through unchanged (translations): returns the backend's response."""
        return await self._post(
            path, data=fields, files={"file": (filename, data, content_type or "application/octet-stream")}
        )

    async def model_names(self) -> list[str]:
        """Names the whisper server accepts (``GET /v1/models``)."""
        status, body = await self.get_json("/v1/models")
        return [m["id"] for m in body.get("data", [])] if status == 200 else []


def transcript_from_verbose(body: dict, *, task: str = "transcribe") -> Transcript:
    """An OpenAI ``verbose_json`` body → ``Transcript`` (segments and words, if any)."""
    segments = []
    for i, s in enumerate(body.get("segments") or []):
        words = tuple(
            Word(w["word"], float(w["start"]), float(w["end"]), w.get("probability")) for w in s.get("words") or []
        )
        segments.append(
            Segment(
                id=i,
                start=float(s["start"]),
                end=float(s["end"]),
                text=s["text"],
                seek=int(s.get("seek", 0)),
                tokens=tuple(s.get("tokens") or ()),
                temperature=float(s.get("temperature", 0.0)),
                avg_logprob=float(s.get("avg_logprob", 0.0)),
                compression_ratio=float(s.get("compression_ratio", 0.0)),
                no_speech_prob=float(s.get("no_speech_prob", 0.0)),
                words=words,
            )
        )
    if not segments and body.get("words"):
        # a server that returned words at the top level only
        words = tuple(Word(w["word"], float(w["start"]), float(w["end"])) for w in body["words"])
        segments.append(Segment(0, words[0].start, words[-1].end, body.get("text", ""), words=words))
    return Transcript(
        text=body.get("text", ""),
        segments=tuple(segments),
        language=body.get("language") or "en",
        duration=float(body.get("duration") or 0.0),
        task=body.get("task") or task,
    )


@dataclass(frozen=True)
class Diarization:
    """The sidecar's answer for one piece of audio (times relative to that piece)."""

    turns: tuple[SpeakerTurn, ...]
    speakers: tuple[str, ...]
    fingerprints: dict[str, np.ndarray] = field(default_factory=dict)
    duration: float = 0.0
    models: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def embedder(self) -> str:
        """The embedder's name as the sidecar describes it ('' when unknown)."""
        return str(self.models.get("embedder", ""))


def diarization_from_json(body: dict) -> Diarization:
    """The sidecar's ``/v1/diarize`` JSON → ``Diarization``."""
    turns = tuple(
        SpeakerTurn(
            float(s["start"]),
            float(s["end"]),
            str(s["speaker"]),
            None if s.get("confidence") is None else float(s["confidence"]),
        )
        for s in body.get("segments") or []
    )
    speakers = tuple(body.get("speakers") or dict.fromkeys(t.speaker for t in turns))
    prints = {str(k): np.asarray(v, dtype=np.float32) for k, v in (body.get("fingerprints") or {}).items() if v}
    return Diarization(
        turns=turns,
        speakers=speakers,
        fingerprints=prints,
        duration=float(body.get("duration") or 0.0),
        models=dict(body.get("models") or {}),
        warnings=tuple(body.get("warnings") or ()),
    )


class SidecarClient(_Backend):
    """The sidecar's ``/v1/diarize`` and ``/v1/speaker-embeddings``."""

    name = "sidecar"

    async def diarize(
        self,
        wav: bytes,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> Diarization:
        """One audio file (16 kHz 16-bit mono WAV) → speaker turns, one fingerprint per local speaker;
        the speaker count bounded as the sidecar's ``/v1/diarize`` fields of the same names bound it.

        The deadline is the client's ``timeout_s`` plus the audio's own duration: offline
        diarization on CPU runs at 1-3x real time on 2 cores, so a fixed deadline would drop the
        speakers of every long window (a 305 s window took 305 s on a loaded machine).
        """
        data = [("response_format", "json")]
        bounds = {"num_speakers": num_speakers, "min_speakers": min_speakers, "max_speakers": max_speakers}
        data += [(k, str(v)) for k, v in bounds.items() if v]
        audio_s = max(0, len(wav) - 44) / (2 * 16000)
        response = await self._post("/v1/diarize", data=data, files=_wav_file(wav), timeout_s=self.timeout_s + audio_s)
        try:
            return diarization_from_json(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendFailed(self.name, f"malformed diarization: {exc}") from exc

    async def max_window_s(self, *, timeout_s: float = 5.0) -> float | None:
        """The longest audio the sidecar diarizes in one call: ``max_window_s`` of the
        ``diarization`` entry of its ``GET /v1/models``, or ``None`` when it reports none (or has
        no such route).

        Raises:
            BackendUnavailable: the sidecar cannot be reached, or its answer is not a model list.
        """
        status, body = await self.get_json("/v1/models", timeout_s=timeout_s)
        if status == 404:  # a sidecar without the route reports nothing
            return None
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise BackendUnavailable(self.name, f"GET /v1/models answered {status}")
        for card in body["data"]:
            if isinstance(card, dict) and card.get("id") == "diarization":
                value = card.get("max_window_s")
                try:
                    value = None if value is None else float(value)
                except (TypeError, ValueError):
                    return None
                return value if value is not None and value > 0 and value == value else None
        return None

    async def embed(self, wav: bytes) -> tuple[np.ndarray, str]:
        """A speaker's clip → ``(unit-norm fingerprint, embedder name)``."""
        response = await self._post("/v1/speaker-embeddings", data=[], files=_wav_file(wav, "reference.wav"))
        try:
            body = response.json()
            vec = body.get("fingerprint") or body.get("embedding")
            if vec is None and body.get("data"):
                vec = body["data"][0].get("embedding") or body["data"][0].get("fingerprint")
            vec = np.asarray(vec, dtype=np.float32)
            model = body.get("model") or (body.get("models") or {}).get("embedder", "")
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise BackendFailed(self.name, f"malformed embedding: {exc}") from exc
        if vec.ndim != 1 or vec.size == 0:
            raise BackendFailed(self.name, "the sidecar returned no embedding")
        return vec / max(float(np.linalg.norm(vec)), 1e-12), str(model)
