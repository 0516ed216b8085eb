"""A corpus of hostile and odd uploads, each with the answer a Chorus server must give.

Built in memory from one clip of speech (16 kHz mono float32), with PyAV (bundled libav) for every
encoding, so nothing outside the Python environment is needed. ``tests/test_bad_input.py`` sends
each entry to the whisper server and the router; ``chorus bench soak`` mixes them into its load.

Odd but valid audio (8 channels at 192 kHz, 24-bit and float32 WAV, a wrong part content type, a
truncated-but-decodable MP3, a unicode prompt) must be accepted: its expected status is 200.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace

import numpy as np

from server.core.audio import SAMPLE_RATE, to_wav_bytes

MODEL = "whisper-1"


@dataclass(frozen=True)
class BadInput:
    """One request and the answer expected.

    Attributes:
        name: short id (``empty-file``).
        filename: the file part's name, or ``None`` for a request without a file part.
        data: the file part's bytes.
        fields: the form's text fields (``model`` included unless the entry is about it).
        content_type: the file part's declared media type.
        body, body_type: a raw request body and its ``Content-Type`` instead of a multipart form.
        status: the HTTP status expected.
        code, param: the OpenAI error's ``code`` / ``param`` expected (checked when not ``None``).
        duration_s: for accepted audio, the duration the server must report (seconds).
    """

    name: str
    filename: str | None
    data: bytes = b""
    fields: tuple[tuple[str, str], ...] = (("model", MODEL),)
    content_type: str = "application/octet-stream"
    body: bytes | None = None
    body_type: str | None = None
    status: int = 400
    code: str | None = None
    param: str | None = None
    duration_s: float | None = None
    notes: str = field(default="", compare=False)

    def size(self) -> int:
        """Bytes of the file part and the text fields (the body's size, less multipart framing)."""
        return len(self.body or b"") + len(self.data) + sum(len(k) + len(v.encode()) for k, v in self.fields)

    def httpx_kwargs(self) -> dict:
        """Keyword arguments for ``httpx.post`` / ``AsyncClient.post`` sending this request."""
        if self.body is not None:
            return {"content": self.body, "headers": {"Content-Type": self.body_type or "application/octet-stream"}}
        kwargs: dict = {"data": _form_dict(self.fields)}
        if self.filename is not None:
            kwargs["files"] = {"file": (self.filename, self.data, self.content_type)}
        else:  # force multipart without a file part
            kwargs["files"] = {"not_file": ("x.txt", b"x", "text/plain")}
        return kwargs


def _form_dict(fields: tuple[tuple[str, str], ...]) -> dict:
    out: dict[str, str | list[str]] = {}
    for k, v in fields:
        if k in out:
            prev = out[k]
            out[k] = [*prev, v] if isinstance(prev, list) else [prev, v]
        else:
            out[k] = v
    return out


def encode(
    samples: np.ndarray, rate: int, *, codec: str, fmt: str, layout: str = "mono", bit_rate: int | None = None
) -> bytes:
    """Encode ``samples`` (``(n,)`` mono or ``(channels, n)``, float32 in [-1, 1]) with libav.

    Args:
        rate: the stream's sample rate (Hz); ``samples`` are taken to be at that rate.
        codec: libav encoder (``pcm_s16le``, ``pcm_s24le``, ``pcm_f32le``, ``libmp3lame``, ``aac`` …).
        fmt: container (``wav``, ``mp3``, ``adts`` …).
        layout: channel layout (``mono``, ``7.1`` …) matching the channel count.
        bit_rate: bits per second for lossy codecs.
    """
    import av

    planar = np.atleast_2d(samples).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        step = rate  # one second per frame keeps memory flat for long silence
        frame_size = stream.codec_context.frame_size or step
        step = max(frame_size, (step // frame_size) * frame_size)
        for start in range(0, planar.shape[1], step):
            chunk = np.ascontiguousarray(planar[:, start : start + step].T.reshape(1, -1))  # interleaved
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz ``samples`` at ``rate`` Hz (linear interpolation: enough for a test signal)."""
    n = int(round(len(samples) * rate / SAMPLE_RATE))
    return np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples).astype(np.float32)


def silence_aac(seconds: float) -> bytes:
    """``seconds`` of digital silence as 8 kHz AAC in ADTS: 2 h is about 0.6 MB."""
    rate = 8000
    return encode(np.zeros(int(seconds * rate), np.float32), rate, codec="aac", fmt="adts", bit_rate=8000)


def bad_inputs(speech: np.ndarray, *, max_audio_s: float, max_upload_mb: float, seed: int = 0) -> list[BadInput]:
    """The corpus, built from ``speech`` (16 kHz mono float32, a few seconds).

    Args:
        speech: the clip of speech the audio entries are made from.
        max_audio_s: the server's duration limit: two hours of silence are refused above it (400
            ``audio_too_long``) and accepted below it.
        max_upload_mb: the server's upload limit (an entry one byte over it expects 413, and so does any
            valid audio entry larger than it).
        seed: for the random bytes.

    Returns:
        Entries in a fixed order (see each ``name``).
    """
    rng = np.random.default_rng(seed)
    speech = np.clip(speech.astype(np.float32), -1, 1)
    seconds = len(speech) / SAMPLE_RATE
    mp3 = encode(speech, SAMPLE_RATE, codec="libmp3lame", fmt="mp3", bit_rate=32000)
    hi_rate = 192_000
    one_s = resample(speech[:SAMPLE_RATE], hi_rate)
    eight = np.stack([one_s * (0.5 + 0.05 * c) for c in range(8)])
    wav16 = encode(speech, SAMPLE_RATE, codec="pcm_s16le", fmt="wav")
    random_bytes = rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    two_hours = 2 * 3600.0
    limit_bytes = int(max_upload_mb * 1_000_000)
    accepted = {"status": 200}
    entries = [
        BadInput("empty-file", "empty.wav", b"", code="invalid_file_format", param="file"),
        BadInput(
            "zero-length-wav",
            "zero.wav",
            to_wav_bytes(np.zeros(0, np.float32)),
            code="invalid_file_format",
            param="file",
        ),
        BadInput(
            "8ms-wav",
            "blip.wav",
            wav16[:300],
            code="audio_too_short",
            param="file",
            notes="the first 300 bytes of a WAV: 8 ms of audio (OpenAI's minimum is 0.1 s)",
        ),
        BadInput(
            "50ms-wav", "short.wav", to_wav_bytes(speech[: SAMPLE_RATE // 20]), code="audio_too_short", param="file"
        ),
        BadInput("truncated-mp3-header", "cut.mp3", mp3[:200], code="invalid_file_format", param="file"),
        BadInput(
            "truncated-mp3-half",
            "half.mp3",
            mp3[: len(mp3) // 2],
            **accepted,
            notes="what libav can decode of a cut file is transcribed, as ffmpeg would",
        ),
        BadInput("random-bytes-wav", "noise.wav", random_bytes, code="invalid_file_format", param="file"),
        BadInput(
            "random-bytes-mp3",
            "noise.mp3",
            random_bytes,
            content_type="audio/mpeg",
            code="invalid_file_format",
            param="file",
        ),
        BadInput(
            "text-file",
            "notes.txt",
            b"Meeting notes: nothing to hear here.\n" * 50,
            content_type="text/plain",
            code="invalid_file_format",
            param="file",
        ),
        BadInput(
            "json-body",
            None,
            body=json.dumps({"model": MODEL, "file": "x"}).encode(),
            body_type="application/json",
            status=415,
            code="unsupported_media_type",
        ),
        BadInput(
            "urlencoded-body",
            None,
            body=b"model=whisper-1&file=x",
            body_type="application/x-www-form-urlencoded",
            status=415,
            code="unsupported_media_type",
        ),
        BadInput(
            "wrong-part-content-type",
            "speech.wav",
            wav16,
            content_type="image/png",
            **accepted,
            duration_s=seconds,
            notes="the bytes decide, not the declared type",
        ),
        BadInput("missing-file-part", None, param="file"),
        BadInput(
            "8ch-192khz-wav",
            "surround.wav",
            encode(eight, hi_rate, codec="pcm_s16le", fmt="wav", layout="7.1"),
            **accepted,
            duration_s=1.0,
        ),
        BadInput(
            "24bit-wav",
            "s24.wav",
            encode(speech, SAMPLE_RATE, codec="pcm_s24le", fmt="wav"),
            **accepted,
            duration_s=seconds,
        ),
        BadInput(
            "float32-wav",
            "f32.wav",
            encode(speech, SAMPLE_RATE, codec="pcm_f32le", fmt="wav"),
            **accepted,
            duration_s=seconds,
        ),
        BadInput(
            "2h-silence",
            "silence.aac",
            silence_aac(two_hours),
            content_type="audio/aac",
            **(
                {"status": 400, "code": "audio_too_long", "param": "file"}
                if max_audio_s < two_hours
                else {"status": 200, "duration_s": two_hours}
            ),
        ),
        BadInput("over-upload-limit", "big.wav", bytes(limit_bytes + 1), status=413, code="file_too_large"),
        BadInput(
            "unicode-prompt",
            "speech.wav",
            wav16,
            fields=(("model", MODEL), ("prompt", "Zoë’s café — 東京, Ελληνικά, emoji 🎙️ \u202e RTL \u0000 nul")),
            **accepted,
            duration_s=seconds,
        ),
        BadInput(
            "long-prompt", "speech.wav", wav16, fields=(("model", MODEL), ("prompt", "word " * 2000)), param="prompt"
        ),
        BadInput(
            "huge-prompt",
            "speech.wav",
            wav16,
            fields=(("model", MODEL), ("prompt", "x" * 3_000_000)),
            code="field_too_large",
            notes="over every server's per-field limit (64 kB; the router's 2 MB)",
        ),
        BadInput(
            "too-many-fields",
            "speech.wav",
            wav16,
            fields=(("model", MODEL), *((f"x{i}", "1") for i in range(100))),
            code="too_many_fields",
        ),
        BadInput(
            "invalid-language",
            "speech.wav",
            wav16,
            fields=(("model", MODEL), ("language", "klingon")),
            param="language",
        ),
        BadInput(
            "unknown-response-format",
            "speech.wav",
            wav16,
            fields=(("model", MODEL), ("response_format", "xml")),
            param="response_format",
        ),
        BadInput(
            "negative-temperature",
            "speech.wav",
            wav16,
            fields=(("model", MODEL), ("temperature", "-0.5")),
            param="temperature",
        ),
        BadInput(
            "nan-temperature",
            "speech.wav",
            wav16,
            fields=(("model", MODEL), ("temperature", "nan")),
            param="temperature",
        ),
        BadInput(
            "unknown-model",
            "speech.wav",
            wav16,
            fields=(("model", "gpt-5-ultra"),),
            status=404,
            code="model_not_found",
            param="model",
        ),
        BadInput("missing-model", "speech.wav", wav16, fields=(), param="model"),
        BadInput("unknown-field", "speech.wav", wav16, fields=(("model", MODEL), ("colour", "blue")), param="colour"),
    ]
    # with a small upload limit, a large request is refused for its size before anything else is looked at
    too_big = {"status": 413, "code": "file_too_large", "param": "file", "duration_s": None}
    return [
        replace(e, **too_big) if len(e.data) > limit_bytes or e.size() > limit_bytes + 64 * 1024 else e for e in entries
    ]


UPLOAD_NAMES = (
    "empty-file",
    "zero-length-wav",
    "8ms-wav",
    "50ms-wav",
    "truncated-mp3-header",
    "truncated-mp3-half",
    "random-bytes-wav",
    "random-bytes-mp3",
    "text-file",
    "json-body",
    "urlencoded-body",
    "wrong-part-content-type",
    "missing-file-part",
    "8ch-192khz-wav",
    "24bit-wav",
    "float32-wav",
    "2h-silence",
    "over-upload-limit",
)
"""The entries about the upload itself (body, file part, audio): every server that takes an audio upload
(the sidecar's ``/v1/diarize`` too) must answer these as the whisper server does."""

FIELD_NAMES = (
    "unicode-prompt",
    "long-prompt",
    "huge-prompt",
    "too-many-fields",
    "invalid-language",
    "unknown-response-format",
    "negative-temperature",
    "nan-temperature",
    "unknown-model",
    "missing-model",
    "unknown-field",
)
"""The entries about the transcription form's fields (prompt, language, model, ...), which only the
whisper server and the router take."""

NAMES = UPLOAD_NAMES + FIELD_NAMES
"""Entry names in corpus order (for test parametrization without building the corpus)."""
