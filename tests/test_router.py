"""The router's steps (chunk, link, merge, SSE) and its app against in-process fake backends.

The fakes make the whole pipeline checkable without models: speaker "A" is a 300 Hz tone, "B" an
800 Hz tone. The fake whisper server "transcribes" each tone burst as ``low``/``high`` words (and
joins bursts closer than 0.7 s into one segment, so some segments hold two speakers); the fake
sidecar labels bursts by pitch with window-local labels in order of appearance, and gives each
local speaker a noisy fingerprint of its pitch class. A fake energy VAD stands in for silero.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.procs import metric_samples
from server.core.audio import SAMPLE_RATE, AudioDecodeError, decode_audio, to_wav_bytes
from server.core.formats import delta_event, done_event, encode_sse, segment_event
from server.core.transcript import Segment, SpeakerTurn, Word
from server.core.vad import VadOptions
from server.kit.protocol import fold_chunking_strategy
from server.kit.settings import RouterSettings
from server.router.app import create_app
from server.router.chunking import Chunk, group_windows, plan_chunks
from server.router.clients import BackendFailed, BackendUnavailable, SidecarClient, WhisperClient
from server.router.merge import assign_speakers, split_segment
from server.router.speakers import (
    KnownSpeaker,
    LocalSpeaker,
    OnlineLinker,
    link_speakers,
    name_speakers,
    speaker_letter,
)
from tests.conftest import make_client

FREQ = {"A": 300.0, "B": 800.0}
WORD = {"A": "low", "B": "high"}


# ---------------------------------------------------------------------------------------------
# synthetic audio and fake backends


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dialogue(turns: list[tuple[str, float, float]]) -> tuple[np.ndarray, list[SpeakerTurn]]:
    """``(speaker, seconds, pause after)`` → samples and reference turns."""
    pieces, ref, t = [np.zeros(int(0.5 * SAMPLE_RATE), np.float32)], [], 0.5
    for spk, dur, pause in turns:
        pieces += [tone(FREQ[spk], dur), np.zeros(int(pause * SAMPLE_RATE), np.float32)]
        ref.append(SpeakerTurn(t, t + dur, spk))
        t += dur + pause
    return np.concatenate(pieces), ref


def bursts(samples: np.ndarray, gap_s: float = 0.1) -> list[tuple[float, float, str]]:
    """Tone bursts ``(start, end, "A"|"B")`` found by 20 ms frame energy and pitch."""
    hop = SAMPLE_RATE // 50
    n = len(samples) // hop
    frames = samples[: n * hop].reshape(n, hop)
    loud = np.sqrt((frames**2).mean(1)) > 0.02
    out: list[list] = []
    for i in np.flatnonzero(loud):
        if out and i * hop / SAMPLE_RATE - out[-1][1] <= gap_s:
            out[-1][1] = (i + 1) * hop / SAMPLE_RATE
        else:
            out.append([i * hop / SAMPLE_RATE, (i + 1) * hop / SAMPLE_RATE])
    res = []
    for a, b in out:
        seg = samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]
        spec = np.abs(np.fft.rfft(seg))
        f = np.argmax(spec) * SAMPLE_RATE / len(seg)
        res.append((round(a, 3), round(b, 3), "A" if f < 550 else "B"))
    return res


class EnergyVad:
    """Stands in for silero-vad: tone bursts are speech."""

    def load(self) -> None:
        pass

    def regions(self, samples, options: VadOptions, max_s: float):
        pad = int(options.padding_ms * SAMPLE_RATE / 1000)
        out = []
        for a, b, _ in bursts(samples, gap_s=options.silence_ms / 1000):
            s, e = max(0, int(a * SAMPLE_RATE) - pad), min(len(samples), int(b * SAMPLE_RATE) + pad)
            if out and s <= out[-1][1]:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out


async def _upload(request: Request) -> tuple[np.ndarray, dict]:
    form = await request.form()
    data = await form["file"].read()
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    fields["granularities"] = form.getlist("timestamp_granularities[]")
    return decode_audio(data), fields


def burst_words(a: float, b: float, spk: str) -> list[dict]:
    """The fake's words for one tone burst: ``low``/``high`` every half second, the last with a full stop."""
    n = max(1, round((b - a) * 2))
    step = (b - a) / n
    return [
        {
            "word": " " + WORD[spk] + ("." if i == n - 1 else ""),
            "start": round(a + i * step, 3),
            "end": round(a + (i + 1) * step, 3),
        }
        for i in range(n)
    ]


def fake_whisper(log: list) -> Starlette:
    """Tone bursts → ``low``/``high`` words; bursts closer than 0.7 s share a segment. Each segment
    has its own decoding statistics; words when asked for; ``json`` gives the text only."""

    async def transcribe(request: Request):
        samples, fields = await _upload(request)
        log.append(fields)
        if fields.get("model") not in ("whisper-1", "tiny"):
            return JSONResponse(
                {
                    "error": {
                        "message": f"The model '{fields.get('model')}' does not exist",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
                status_code=404,
            )
        segs: list[dict] = []
        for a, b, spk in bursts(samples):
            words = burst_words(a, b, spk)
            if segs and a - segs[-1]["end"] < 0.7:
                segs[-1]["end"] = b
                segs[-1]["words"] += words
            else:
                segs.append({"start": a, "end": b, "words": words})
        out = [
            {
                "id": i,
                "seek": 100 * i,
                "start": s["start"],
                "end": s["end"],
                "text": "".join(w["word"] for w in s["words"]),
                "tokens": [1, 2 + i],
                "temperature": 0.0,
                "avg_logprob": round(-0.1 - 0.01 * i, 3),
                "compression_ratio": round(1.0 + 0.1 * i, 3),
                "no_speech_prob": round(0.01 * i, 3),
                **({"words": s["words"]} if "word" in fields["granularities"] else {}),
            }
            for i, s in enumerate(segs)
        ]
        text = "".join(s["text"] for s in out).strip()
        if fields.get("response_format") == "json":
            return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": 1}})
        return JSONResponse(
            {
                "task": "transcribe",
                "language": fields.get("language") or "en",
                "duration": len(samples) / SAMPLE_RATE,
                "text": text,
                "segments": out,
            }
        )

    async def translate(request: Request):
        try:
            samples, fields = await _upload(request)
        except AudioDecodeError as exc:  # the router passes uploads through: answer as the whisper server does
            return JSONResponse(
                {"error": {"message": str(exc), "type": "invalid_request_error", "param": "file", "code": exc.code}},
                status_code=400,
            )
        return JSONResponse({"text": f"translated {len(samples) / SAMPLE_RATE:.1f}s"})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "whisper-1"}, {"id": "tiny"}]})

    async def ready(request: Request):
        return JSONResponse({"ready": True, "detail": "ready"})

    return Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
            Route("/v1/audio/translations", translate, methods=["POST"]),
            Route("/v1/models", models),
            Route("/ready", ready),
        ]
    )


def fingerprint(spk: str, rng: np.random.Generator) -> list[float]:
    base = np.zeros(16)
    base[0 if spk == "A" else 1] = 1.0
    v = base + 0.05 * rng.standard_normal(16)
    return (v / np.linalg.norm(v)).tolist()


def fake_sidecar(control: dict) -> Starlette:
    """Bursts labelled by pitch with window-local labels; ``control``: ``fail``, ``silent`` (no
    speech found: no turns), ``delay``,
    ``max_window_s`` (reported by ``GET /v1/models`` when set; that route answers 404 otherwise,
    as an old sidecar's list without the field would), ``models_delay``; counts ``calls``,
    ``models_calls`` and the ``seconds`` of each diarized file."""
    rng = np.random.default_rng(0)

    async def diarize(request: Request):
        samples, fields = await _upload(request)
        control["calls"] = control.get("calls", 0) + 1
        control.setdefault("fields", []).append(fields)
        control.setdefault("seconds", []).append(len(samples) / SAMPLE_RATE)
        if control.get("fail"):
            return JSONResponse(
                {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}, status_code=500
            )
        if control.get("delay"):
            await asyncio.sleep(control["delay"])
        local: dict[str, str] = {}
        segs = []
        for a, b, spk in [] if control.get("silent") else bursts(samples):
            label = local.setdefault(spk, f"speaker_{len(local)}")
            segs.append({"start": a, "end": b, "speaker": label, "confidence": 0.9})
        return JSONResponse(
            {
                "segments": segs,
                "speakers": list(local.values()),
                "fingerprints": {lab: fingerprint(spk, rng) for spk, lab in local.items()},
                "duration": len(samples) / SAMPLE_RATE,
                "models": {"backend": "fake", "embedder": "fake-pitch"},
                "warnings": [],
            }
        )

    async def embed(request: Request):
        samples, _ = await _upload(request)
        spk = bursts(samples)[0][2]
        return JSONResponse({"object": "speaker_embedding", "model": "fake-pitch", "embedding": fingerprint(spk, rng)})

    async def ready(request: Request):
        return JSONResponse({"ready": True, "detail": "ready"})

    async def models(request: Request):
        control["models_calls"] = control.get("models_calls", 0) + 1
        if control.get("models_delay"):
            await asyncio.sleep(control["models_delay"])
        if "max_window_s" not in control:
            return JSONResponse(
                {"error": {"message": "no such route", "type": "invalid_request_error", "param": None, "code": None}},
                status_code=404,
            )
        card = {"id": "diarization", "object": "model", "backend": "fake"}
        if control["max_window_s"] is not None:
            card["max_window_s"] = control["max_window_s"]
        return JSONResponse({"object": "list", "data": [card, {"id": "speaker-embedding", "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/diarize", diarize, methods=["POST"]),
            Route("/v1/speaker-embeddings", embed, methods=["POST"]),
            Route("/v1/models", models),
            Route("/ready", ready),
        ]
    )


def router_app(whisper_log=None, control=None, *, whisper_transport=None, sidecar_transport=None, **overrides):
    overrides = {
        "max_chunk_s": 10.0,
        "diarization_window_s": 10.0,
        "link_threshold": 0.8,
        "known_speaker_threshold": 0.8,
        **overrides,
    }
    settings = RouterSettings(**overrides)
    transports = {
        "whisper": whisper_transport
        or httpx.ASGITransport(app=fake_whisper(whisper_log if whisper_log is not None else [])),
        "sidecar": sidecar_transport or httpx.ASGITransport(app=fake_sidecar(control if control is not None else {})),
    }
    return create_app(settings, vad=EnergyVad(), transports=transports)


CONVERSATION = [
    ("A", 3.0, 0.8),
    ("B", 2.0, 0.3),
    ("A", 1.5, 1.0),
    ("B", 4.0, 0.9),
    ("A", 2.5, 0.5),
    ("B", 3.0, 1.2),
    ("A", 4.0, 0.8),
    ("B", 2.0, 0.9),
    ("A", 3.0, 0.8),
    ("B", 3.5, 1.0),
]


@pytest.fixture(scope="module")
def conv():
    return dialogue(CONVERSATION)


def wav(samples) -> bytes:
    return to_wav_bytes(samples)


# ---------------------------------------------------------------------------------------------
# chunking


def test_plan_chunks_merges_regions_up_to_the_limit():
    samples = np.zeros(100 * SAMPLE_RATE, np.float32)
    s = SAMPLE_RATE
    regions = [(1 * s, 5 * s), (6 * s, 20 * s), (21 * s, 29 * s), (31 * s, 40 * s), (70 * s, 75 * s)]
    chunks = plan_chunks(samples, regions, max_s=30.0)
    assert [(c.start // s, c.end // s) for c in chunks] == [(1, 29), (31, 40), (70, 75)]
    assert [c.index for c in chunks] == [0, 1, 2]
    assert all(c.duration <= 30.0 for c in chunks)


def test_plan_chunks_splits_long_regions_at_quiet_points_and_falls_back_without_vad():
    rng = np.random.default_rng(0)
    samples = (0.3 * rng.standard_normal(75 * SAMPLE_RATE)).astype(np.float32)
    samples[27 * SAMPLE_RATE : int(27.4 * SAMPLE_RATE)] = 0.0  # a quiet moment the cut should find
    chunks = plan_chunks(samples, [(0, len(samples))], max_s=30.0)
    assert all(c.duration <= 30.0 + 1e-9 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(samples)
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))  # touching: no sample lost
    assert 27.0 <= chunks[0].end / SAMPLE_RATE <= 27.4
    fixed = plan_chunks(samples, None, max_s=30.0)  # no VAD: fixed windows cut at quiet frames
    assert [(c.start, c.end) for c in fixed] == [(c.start, c.end) for c in chunks]
    assert plan_chunks(samples, [], max_s=30.0) == []


def test_group_windows():
    s = SAMPLE_RATE
    chunks = [Chunk(0, 0, 10 * s), Chunk(1, 11 * s, 25 * s), Chunk(2, 26 * s, 40 * s), Chunk(3, 50 * s, 55 * s)]
    assert [w.chunks for w in group_windows(chunks, 30)] == [(0, 1), (2, 3)]
    assert [w.chunks for w in group_windows(chunks, 14)] == [(0,), (1,), (2,), (3,)]
    assert [w.chunks for w in group_windows(chunks, 60)] == [(0, 1, 2, 3)]
    # the VAD's chunks start at 2 s and end at 55 s of a 58 s file: with its length the windows
    # reach the file's edges where they stay within the window length (the leading 2 s and the
    # trailing 3 s are diarized), and never grow past it
    late = [Chunk(0, 2 * s, 10 * s), *chunks[1:]]
    spans = [(w.start // s, w.end // s) for w in group_windows(late, 60, 58 * s)]
    assert spans == [(0, 58)]
    spans = [(w.start // s, w.end // s) for w in group_windows(late, 30, 58 * s)]
    assert spans == [(0, 25), (26, 55)]  # 26-58 would be over 30 s
    spans = [(w.start // s, w.end // s) for w in group_windows(late, 24, 58 * s)]
    assert spans == [(2, 25), (26, 40), (50, 58)]  # 0-25 would be over 24 s
    assert [(w.start // s, w.end // s) for w in group_windows(late, 30)] == [(2, 25), (26, 55)]


def test_chunking_strategy_options():
    default = VadOptions(0.5, 500, 300)
    assert VadOptions.from_strategy(None, default) is default
    assert VadOptions.from_strategy("auto", default) is default
    got = VadOptions.from_strategy('{"type": "server_vad", "threshold": 0.3, "silence_duration_ms": 200}', default)
    assert got == VadOptions(0.3, 200, 300)
    for bad in (
        "manual",
        '{"type": "other"}',
        '{"type": "server_vad", "threshold": 2}',
        '{"type": "server_vad", "foo": 1}',
    ):
        with pytest.raises(ValueError):
            VadOptions.from_strategy(bad, default)
    folded = fold_chunking_strategy({"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "0.4"})
    assert json.loads(folded) == {"type": "server_vad", "threshold": 0.4}


# ---------------------------------------------------------------------------------------------
# speaker linking


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def similar(v, cos, rng):
    """A unit vector at cosine ``cos`` from unit ``v``."""
    w = rng.standard_normal(v.shape[0])
    w = _unit(w - (w @ v) * v)
    return _unit(cos * v + np.sqrt(1 - cos**2) * w)


def test_link_speakers_clusters_across_windows():
    rng = np.random.default_rng(1)
    a, b = _unit(rng.standard_normal(32)), _unit(rng.standard_normal(32))
    noisy = lambda v: _unit(v + 0.05 * rng.standard_normal(32))  # noqa: E731
    speakers = [
        LocalSpeaker(0, "speaker_0", noisy(a), 10),
        LocalSpeaker(0, "speaker_1", noisy(b), 8),
        LocalSpeaker(1, "speaker_0", noisy(b), 9),
        LocalSpeaker(1, "speaker_1", noisy(a), 7),
        LocalSpeaker(2, "speaker_0", noisy(a), 12),
        LocalSpeaker(2, "speaker_1", noisy(a), 2),  # the diarizer split A in two: joined again
        LocalSpeaker(3, "speaker_0", None, 0.3),  # too little speech for a fingerprint
    ]
    links = link_speakers(speakers, threshold=0.8)
    ca = links[(0, "speaker_0")].cluster
    cb = links[(0, "speaker_1")].cluster
    assert ca != cb
    assert links[(1, "speaker_1")].cluster == ca and links[(1, "speaker_0")].cluster == cb
    assert links[(2, "speaker_0")].cluster == links[(2, "speaker_1")].cluster == ca
    assert links[(3, "speaker_0")].cluster is None and links[(3, "speaker_0")].confidence == 0.0
    for key in [(0, "speaker_0"), (0, "speaker_1"), (1, "speaker_0"), (1, "speaker_1")]:
        assert links[key].confidence > 0.9


def test_similar_voices_of_one_window_stay_apart():
    rng = np.random.default_rng(5)
    a = _unit(rng.standard_normal(32))
    speakers = [LocalSpeaker(0, "s0", a), LocalSpeaker(1, "s0", a), LocalSpeaker(1, "s1", similar(a, 0.86, rng))]
    links = link_speakers(speakers, threshold=0.8)
    assert links[(0, "s0")].cluster == links[(1, "s0")].cluster != links[(1, "s1")].cluster


def _two_voices_and_a_near_one() -> list[LocalSpeaker]:
    """Voices a and b in windows 0 and 1; window 2 holds a voice at cosine 0.77 from a: just
    below a 0.8 link threshold, so it matches no cluster well."""
    rng = np.random.default_rng(2)
    a, b = _unit(rng.standard_normal(32)), _unit(rng.standard_normal(32))
    near = similar(a, 0.77, rng)
    return [
        LocalSpeaker(0, "s0", a),
        LocalSpeaker(0, "s1", b),
        LocalSpeaker(1, "s0", a),
        LocalSpeaker(1, "s1", b),
        LocalSpeaker(2, "s0", near),
    ]


def test_an_ambiguous_speaker_keeps_a_low_confidence():
    links = link_speakers(_two_voices_and_a_near_one(), threshold=0.8)
    amb = links[(2, "s0")]
    assert amb.cluster not in (links[(0, "s0")].cluster, links[(0, "s1")].cluster)  # not forced
    assert amb.confidence < 0.9
    assert links[(1, "s0")].confidence > 0.95


def test_max_clusters_links_past_the_threshold():
    """A client's ``num_speakers`` / ``max_speakers`` caps the linked speakers: the most similar
    clusters keep merging below the threshold until no more than that many are left."""
    speakers = _two_voices_and_a_near_one()  # the near voice: a speaker of its own without a cap
    assert len({link.cluster for link in link_speakers(speakers, threshold=0.8).values()}) == 3
    links = link_speakers(speakers, threshold=0.8, max_clusters=2)
    assert len({link.cluster for link in links.values()}) == 2
    assert links[(2, "s0")].cluster == links[(0, "s0")].cluster != links[(0, "s1")].cluster
    assert len({link.cluster for link in link_speakers(speakers, 0.8, max_clusters=5).values()}) == 3


def test_single_window_needs_no_fingerprints():
    links = link_speakers([LocalSpeaker(0, "speaker_0", None), LocalSpeaker(0, "speaker_1", None)], 0.8)
    assert {link.cluster for link in links.values()} == {0, 1}
    assert all(link.confidence == 1.0 for link in links.values())


def test_online_linker_matches_one_to_one():
    rng = np.random.default_rng(3)
    a, b, c = (_unit(rng.standard_normal(32)) for _ in range(3))
    linker = OnlineLinker(0.8)
    first = linker.add([LocalSpeaker(0, "x", a, 5), LocalSpeaker(0, "y", b, 5)])
    second = linker.add([LocalSpeaker(1, "p", b, 5), LocalSpeaker(1, "q", a, 5), LocalSpeaker(1, "r", c, 5)])
    assert second[(1, "p")].cluster == first[(0, "y")].cluster
    assert second[(1, "q")].cluster == first[(0, "x")].cluster
    assert second[(1, "r")].cluster not in (first[(0, "x")].cluster, first[(0, "y")].cluster)


def test_online_linker_keeps_to_the_cap():
    """With ``max_clusters`` reached, a speaker that matches no cluster joins its most similar one."""
    rng = np.random.default_rng(3)
    a, b = (_unit(rng.standard_normal(32)) for _ in range(2))
    near_a = similar(a, 0.5, rng)  # far below the threshold, nearer to a than to b
    linker = OnlineLinker(0.8, max_clusters=2)
    first = linker.add([LocalSpeaker(0, "x", a, 5), LocalSpeaker(0, "y", b, 5)])
    second = linker.add([LocalSpeaker(1, "p", b, 5), LocalSpeaker(1, "r", near_a, 5)])
    assert second[(1, "p")].cluster == first[(0, "y")].cluster
    assert second[(1, "r")].cluster == first[(0, "x")].cluster
    uncapped = OnlineLinker(0.8)
    uncapped.add([LocalSpeaker(0, "x", a, 5), LocalSpeaker(0, "y", b, 5)])
    assert uncapped.add([LocalSpeaker(1, "r", near_a, 5)])[(1, "r")].cluster == 2  # a new speaker


def test_embedder_families_pick_their_thresholds():
    from server.router.speakers import KNOWN_THRESHOLDS, default_threshold, embedder_family

    assert embedder_family("CAM++ 3D-Speaker campplus_cn_en_common.pt (192-d)") == "campplus"
    assert embedder_family("resemblyzer-0.1.4/pretrained.pt (GE2E, 256-d)") == "resemblyzer"
    assert embedder_family("nvidia/titanet_large") == "titanet"
    assert default_threshold("CAM++ 3D-Speaker x.pt") == 0.66
    assert default_threshold("CAM++ 3D-Speaker x.pt", KNOWN_THRESHOLDS) == 0.45
    assert default_threshold("something else") == 0.75


def test_names_letters_and_known_speakers():
    assert [speaker_letter(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]
    rng = np.random.default_rng(4)
    a, b, c = (_unit(rng.standard_normal(32)) for _ in range(3))
    cents = {0: a, 1: b, 2: c}
    assert name_speakers([2, 0, 1], cents) == {2: "A", 0: "B", 1: "C"}
    named = name_speakers([0, 1, 2], cents, [KnownSpeaker("agent", b), KnownSpeaker("A", _unit(c + 0.01))], 0.8)
    assert named[1] == "agent" and named[2] == "A" and named[0] == "B"  # letters skip known names


# ---------------------------------------------------------------------------------------------
# merge


def seg(i, start, end, text, words=()):
    return Segment(id=i, start=start, end=end, text=text, words=words)


def test_assign_by_maximum_overlap():
    turns = [SpeakerTurn(0.0, 4.0, "A", 0.9), SpeakerTurn(4.2, 9.0, "B", 0.8), SpeakerTurn(9.5, 12.0, "A", 1.0)]
    segs = [
        seg(0, 0.1, 3.9, " one two"),
        seg(1, 3.5, 8.0, " three four"),
        seg(2, 12.5, 13.0, " tail"),
        seg(3, 40.0, 41.0, " far away"),
    ]
    out = assign_speakers(segs, turns)
    assert [s.speaker for s in out] == ["A", "B", "A", None]
    assert out[0].confidence == pytest.approx(0.9)
    assert 0 < out[1].confidence < 0.8  # B's share of the segment's speech times its confidence
    assert out[2].confidence == pytest.approx(0.5)  # nearest turn, confidence halved
    assert [s.id for s in out] == [0, 1, 2, 3]


def test_a_segment_with_two_speakers_is_split_at_the_sentence_end():
    turns = [SpeakerTurn(10.0, 13.0, "A", 0.9), SpeakerTurn(13.6, 16.0, "B", 0.9)]
    s = seg(0, 10.0, 16.0, " Of course. Which figures looked strange to you today?")
    out = assign_speakers([s], turns)
    assert [(p.speaker, p.text) for p in out] == [
        ("A", " Of course."),
        ("B", " Which figures looked strange to you today?"),
    ]
    assert out[0].start == 10.0 and out[-1].end == 16.0 and out[0].end <= out[1].start
    assert "".join(p.text for p in out) == s.text


def test_split_segment_keeps_all_words_without_punctuation():
    timeline = [SpeakerTurn(0, 2, "A"), SpeakerTurn(2, 4, "B"), SpeakerTurn(4, 6, "A")]
    s = seg(0, 0, 6, " a1 a2 a3 b1 b2 b3 c1 c2 c3")
    out = split_segment(s, timeline)
    assert [p.speaker for p in out] == ["A", "B", "A"]
    assert "".join(p.text for p in out) == s.text
    assert out[1].text == " b1 b2 b3"


def test_a_one_word_segment_over_two_speakers_goes_to_the_longer_one():
    turns = [SpeakerTurn(0.0, 4.0, "A", 0.9), SpeakerTurn(4.5, 13.0, "B", 0.8), SpeakerTurn(13.0, 14.0, "A", 1.0)]
    out = assign_speakers([seg(0, 0.5, 13.5, " word"), seg(1, 13.5, 13.5, " zero")], turns)
    assert [s.speaker for s in out] == ["B", "A"]
    assert all(s.confidence is not None for s in out)


def test_words_are_assigned_one_by_one():
    words = (Word(" hi", 0.0, 0.5), Word(" there.", 0.5, 1.0), Word(" Hello", 1.3, 1.8), Word(" back.", 1.8, 2.2))
    turns = [SpeakerTurn(0.0, 1.1, "A"), SpeakerTurn(1.2, 2.3, "B")]
    out = assign_speakers([seg(0, 0.0, 2.2, " hi there. Hello back.", words)], turns)
    assert [(p.speaker, p.text) for p in out] == [("A", " hi there."), ("B", " Hello back.")]


def test_merge_of_a_long_file_attributes_every_segment():
    """20,000 segments against 20,000 turns (an interval tree keeps this to seconds; no timed assertion:
    performance lives in bench/)."""
    turns = [SpeakerTurn(i, i + 0.9, "AB"[i % 2]) for i in range(20000)]
    segs = [seg(i, i + 0.1, i + 0.8, " x") for i in range(20000)]
    out = assign_speakers(segs, turns)
    assert [s.speaker for s in out] == ["AB"[i % 2] for i in range(20000)]


# ---------------------------------------------------------------------------------------------
# SSE


def test_sse_events_render_as_openai_sends_them():
    assert (
        encode_sse(delta_event(" hi", "seg_0"))
        == b'data: {"type": "transcript.text.delta", "delta": " hi", "segment_id": "seg_0"}\n\n'
    )
    ev = segment_event(Segment(id=3, start=1.23456, end=2.0, text=" Hello.", speaker="A", confidence=0.75))
    assert ev == {
        "type": "transcript.text.segment",
        "id": "seg_3",
        "start": 1.235,
        "end": 2.0,
        "speaker": "A",
        "text": "Hello.",
        "confidence": 0.75,
    }
    assert done_event("all", ["w", "w"]) == {"type": "transcript.text.done", "text": "all", "warnings": ["w"]}
    assert "warnings" not in done_event("x")


# ---------------------------------------------------------------------------------------------
# the app with fake backends, through the OpenAI SDK


def check_speakers(segments, ref: list[SpeakerTurn]):
    """Every segment's words belong to its speaker, and the labels map one-to-one to the truth."""
    mapping: dict[str, str] = {}
    for s in segments:
        words = {w.strip(".") for w in s.text.split()}
        assert len(words) == 1, s
        truth = "A" if words == {"low"} else "B"
        assert mapping.setdefault(s.speaker, truth) == truth, (s, mapping)
    assert len(set(mapping.values())) == len(mapping) == 2


async def test_diarized_json_end_to_end_with_fakes(conv):
    samples, ref = conv
    log: list = []
    control: dict = {}
    client = make_client(router_app(log, control))
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("c.wav", wav(samples)),
        response_format="diarized_json",
        chunking_strategy="auto",
    )
    assert out.task == "transcribe" and out.duration == pytest.approx(len(samples) / SAMPLE_RATE, abs=0.01)
    assert len(log) >= 4 and control["calls"] >= 4  # several chunks and windows
    assert {f["model"] for f in log} == {"whisper-1"}
    assert all(f.get("language") == "en" for f in log[1:])  # the first chunk's language pinned the rest
    check_speakers(out.segments, ref)
    assert out.segments[0].speaker == "A"
    assert [s.id for s in out.segments] == [f"seg_{i}" for i in range(len(out.segments))]
    assert all(s.type == "transcript.text.segment" for s in out.segments)
    assert all(0.0 <= s.model_extra["confidence"] <= 1.0 for s in out.segments)
    n_words = sum(max(1, round(d * 2)) for _, d, _ in CONVERSATION)
    assert len(out.text.split()) == n_words  # nothing lost at chunk cuts
    assert not (out.model_extra or {}).get("warnings")


async def test_speaker_count_bounds_reach_the_sidecar(conv):
    """pyannote's ``num_speakers`` / ``min_speakers`` / ``max_speakers`` (``extra_body``): a file
    diarized in one window passes them as given; over several windows each window gets only the cap
    (one window may hold fewer people than the file), and the linking keeps to it."""
    samples, _ = conv
    control: dict = {}
    client = make_client(router_app([], control))  # 10 s diarization windows: several
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("c.wav", wav(samples)),
        response_format="diarized_json",
        chunking_strategy="auto",
        extra_body={"num_speakers": 1},
    )
    assert control["calls"] >= 3
    assert all(f.get("max_speakers") == "1" and "num_speakers" not in f for f in control["fields"])
    assert {s.speaker for s in out.segments} == {"A"}  # two voices, linked into the one asked for
    control = {}
    client = make_client(router_app([], control, diarization_window_s=60.0))  # the whole file: one window
    await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("c.wav", wav(samples)),
        response_format="diarized_json",
        chunking_strategy="auto",
        extra_body={"min_speakers": 2, "max_speakers": 3},
    )
    assert control["calls"] == 1
    assert {k: control["fields"][0].get(k) for k in ("min_speakers", "max_speakers", "num_speakers")} == {
        "min_speakers": "2",
        "max_speakers": "3",
        "num_speakers": None,
    }
    # inconsistent bounds are refused here, not a failed diarization later
    for bounds, param in (
        ({"min_speakers": 3, "max_speakers": 2}, "min_speakers"),
        ({"num_speakers": 4, "max_speakers": 3}, "num_speakers"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(
                model="gpt-4o-transcribe-diarize",
                file=("c.wav", wav(samples)),
                response_format="diarized_json",
                extra_body=bounds,
            )
        assert info.value.body["param"] == param, bounds


async def test_a_stream_keeps_to_the_speaker_cap(conv):
    samples, _ = conv
    client = make_client(router_app([], {}))  # 10 s diarization windows: linked online
    speakers = set()
    async with client.audio.transcriptions.with_streaming_response.create(
        model="gpt-4o-transcribe-diarize",
        file=("c.wav", wav(samples)),
        response_format="diarized_json",
        chunking_strategy="auto",
        stream=True,
        extra_body={"max_speakers": 1},
    ) as response:
        async for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "transcript.text.segment":
                    speakers.add(event["speaker"])
    assert speakers == {"A"}


async def test_only_the_diarize_model_diarizes(conv):
    """whisper-1 is a plain transcription in every format (the sidecar is never called);
    the diarize model gives speakers where the format carries them; diarized_json needs it."""
    samples, _ = conv
    control: dict = {}
    client = make_client(router_app(None, control))
    data = ("c.wav", wav(samples))
    srt = await client.audio.transcriptions.create(model="whisper-1", file=data, response_format="srt")
    vtt = await client.audio.transcriptions.create(model="whisper-1", file=data, response_format="vtt")
    verbose = await client.audio.transcriptions.create(model="whisper-1", file=data, response_format="verbose_json")
    assert "low" in srt and "high" in srt and "[A]" not in srt and "[B]" not in srt
    assert vtt.startswith("WEBVTT") and "low" in vtt and "<v " not in vtt
    assert verbose.segments and all("speaker" not in (s.model_extra or {}) for s in verbose.segments)
    stream = await client.audio.transcriptions.create(model="whisper-1", file=data, response_format="srt", stream=True)
    assert {ev.type async for ev in stream} == {"transcript.text.delta", "transcript.text.done"}
    assert control.get("calls", 0) == 0  # no diarization asked of the sidecar
    with pytest.raises(openai.BadRequestError, match="diarization model") as exc:
        await client.audio.transcriptions.create(model="whisper-1", file=data, response_format="diarized_json")
    assert exc.value.body["param"] == "response_format"

    srt = await client.audio.transcriptions.create(model="gpt-4o-transcribe-diarize", file=data, response_format="srt")
    assert "[A] low" in srt and "[B] high" in srt
    vtt = await client.audio.transcriptions.create(model="gpt-4o-transcribe-diarize", file=data, response_format="vtt")
    assert vtt.startswith("WEBVTT") and "<v A>low" in vtt and "<v B>high" in vtt
    verbose = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=data, response_format="verbose_json"
    )
    assert {s.model_extra["speaker"] for s in verbose.segments} == {"A", "B"}
    calls = control["calls"]
    for fmt in ("text", "json"):  # nowhere to put speakers: no diarization
        out = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=data, response_format=fmt
        )
        assert "low" in str(out) and "high" in str(out)
    assert control["calls"] == calls


async def test_a_diarizer_that_finds_no_speech_still_gives_every_segment_a_speaker(conv):
    """Whisper writes text where the diarizer finds no speech (a quiet voice; Whisper's words on
    silence): diarized_json segments still carry a speaker (OpenAI's type requires a string), one
    speaker ``A``, with a warning; the same in the stream's segment events."""
    samples, _ = conv
    client = make_client(router_app(None, {"silent": True}))
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("c.wav", wav(samples)), response_format="diarized_json"
    )
    assert "low" in out.text and "high" in out.text and out.segments
    assert {s.speaker for s in out.segments} == {"A"}
    assert any("found no speech" in w for w in out.model_extra["warnings"])
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("c.wav", wav(samples)), response_format="diarized_json", stream=True
    )
    segs = [ev async for ev in stream if ev.type == "transcript.text.segment"]
    assert segs and {ev.speaker for ev in segs} == {"A"}


async def test_sidecar_failure_degrades_to_a_transcript_with_warnings(conv):
    samples, _ = conv
    client = make_client(router_app(None, {"fail": True}))
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("c.wav", wav(samples)), response_format="diarized_json"
    )
    assert "low" in out.text and "high" in out.text
    assert all(s.speaker is None for s in out.segments)
    warnings = out.model_extra["warnings"]
    assert any("diarization failed" in w and "sidecar" in w for w in warnings)


async def test_whisper_down_is_503_with_retry_after(conv):
    samples, _ = conv

    def refuse(request):
        raise httpx.ConnectError("connection refused")

    app = router_app(whisper_transport=httpx.MockTransport(refuse))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
    r = await http.post(
        "/v1/audio/transcriptions",
        data={"model": "gpt-4o-transcribe-diarize", "response_format": "diarized_json"},
        files={"file": ("c.wav", wav(samples[: 5 * SAMPLE_RATE]))},
    )
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "backend_unavailable"
    client = make_client(app)
    with pytest.raises(openai.APIStatusError) as exc:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("c.wav", wav(samples[: 5 * SAMPLE_RATE])), stream=True
        )
    assert exc.value.status_code == 503


async def test_backend_errors_pass_through_and_validation(conv):
    samples, _ = conv
    client = make_client(router_app())
    with pytest.raises(openai.NotFoundError):
        await client.audio.transcriptions.create(model="nope", file=("c.wav", wav(samples[: 3 * SAMPLE_RATE])))
    with pytest.raises(openai.BadRequestError) as exc:
        await client.audio.transcriptions.create(
            model="whisper-1",
            file=("c.wav", wav(samples[: 3 * SAMPLE_RATE])),
            chunking_strategy={"type": "server_vad", "threshold": 3},
        )
    assert exc.value.body["param"] == "chunking_strategy"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=("c.wav", wav(samples[: 3 * SAMPLE_RATE])),
            response_format="diarized_json",
            known_speaker_names=["x"],
            known_speaker_references=["not a data url"],
        )
    assert exc.value.body["param"] == "known_speaker_references"
    with pytest.raises(openai.BadRequestError):
        await client.audio.transcriptions.create(model="whisper-1", file=("c.wav", b"not audio"))


async def test_over_capacity_is_429(conv):
    samples, _ = conv
    app = router_app(None, {"delay": 1.0}, max_concurrent=1, max_queue=0)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")

    async def call():
        return await http.post(
            "/v1/audio/transcriptions",
            data={"model": "gpt-4o-transcribe-diarize", "response_format": "diarized_json"},
            files={"file": ("c.wav", wav(samples[: 8 * SAMPLE_RATE]))},
        )

    first = asyncio.create_task(call())
    await asyncio.sleep(0.3)
    second = await call()
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert (await first).status_code == 200


async def test_streaming_deltas_segments_and_done(conv):
    samples, ref = conv
    client = make_client(router_app())
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("c.wav", wav(samples)), response_format="diarized_json", stream=True
    )
    events = [ev async for ev in stream]
    kinds = [ev.type for ev in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    segments = [ev for ev in events if ev.type == "transcript.text.segment"]
    deltas = [ev for ev in events if ev.type == "transcript.text.delta"]
    assert len(segments) == len(deltas) >= 8
    assert [d.segment_id for d in deltas] == [s.id for s in segments]
    check_speakers(segments, ref)
    assert "".join(d.delta for d in deltas) == events[-1].text
    plain = await client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav(samples)), stream=True)
    plain_events = [ev async for ev in plain]
    assert {ev.type for ev in plain_events} == {"transcript.text.delta", "transcript.text.done"}
    assert plain_events[-1].text == events[-1].text


async def test_known_speaker_names(conv):
    samples, _ = conv

    def data_url(spk: str) -> str:
        return "data:audio/wav;base64," + base64.b64encode(wav(tone(FREQ[spk], 3.0))).decode()

    client = make_client(router_app())
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("c.wav", wav(samples)),
        response_format="diarized_json",
        known_speaker_names=["bob", "alice"],
        known_speaker_references=[data_url("B"), data_url("A")],
    )
    for s in out.segments:
        assert s.speaker == ("alice" if "low" in s.text else "bob")
    too_short = "data:audio/wav;base64," + base64.b64encode(wav(tone(300, 0.5))).decode()
    with pytest.raises(openai.BadRequestError, match="between 2 and 10 seconds"):
        await client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=("c.wav", wav(samples)),
            response_format="diarized_json",
            known_speaker_names=["x"],
            known_speaker_references=[too_short],
        )


async def test_translations_are_forwarded_and_models_listed(conv):
    samples, _ = conv
    app = router_app()
    client = make_client(app)
    out = await client.audio.translations.create(model="whisper-1", file=("c.wav", wav(samples[: 4 * SAMPLE_RATE])))
    assert out.text == "translated 4.0s"
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
    models = (await http.get("/v1/models")).json()
    assert "gpt-4o-transcribe-diarize" in {m["id"] for m in models["data"]}
    assert (await http.get("/health")).status_code == 200
    assert (await http.get("/ready")).status_code == 503  # lifespan (backend polling) not started here
    metrics = (await http.get("/metrics")).text
    assert metric_samples(metrics, "chorus_router_chunks_total") == [({}, 0.0)]  # translations are not chunked


async def test_ready_follows_the_backends():
    """With the lifespan running, /ready turns 200 once both backends answer /ready."""
    app = router_app(ready_poll_s=0.05)
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
        for _ in range(100):
            r = await http.get("/ready")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.json()
        models = (await http.get("/v1/models")).json()
        assert {"whisper-1", "tiny", "gpt-4o-transcribe-diarize"} <= {m["id"] for m in models["data"]}


# ---------------------------------------------------------------------------------------------
# clients


async def test_clients_retry_once_then_report_unavailable():
    calls = []

    def flaky(request):
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"text": "ok", "segments": [{"start": 0, "end": 1, "text": " ok"}]})

    w = WhisperClient("http://w", concurrency=2, timeout_s=5, transport=httpx.MockTransport(flaky))
    t = await w.transcribe(b"RIFF", model="whisper-1")
    assert len(calls) == 2 and t.segments[0].text == " ok"

    def down(request):
        raise httpx.ConnectError("refused")

    s = SidecarClient("http://s", concurrency=1, timeout_s=5, transport=httpx.MockTransport(down))
    with pytest.raises(BackendUnavailable):
        await s.diarize(b"RIFF")

    def broken(request):
        return httpx.Response(500, json={"error": {"message": "kaput"}})

    s = SidecarClient("http://s", concurrency=1, timeout_s=5, transport=httpx.MockTransport(broken))
    with pytest.raises(BackendFailed, match="kaput"):
        await s.diarize(b"RIFF")


async def test_silence_gives_an_empty_transcript():
    client = make_client(router_app())
    silent = np.zeros(5 * SAMPLE_RATE, np.float32)
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("s.wav", wav(silent)), response_format="diarized_json"
    )
    assert out.text == "" and out.segments == []
    stream = await client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav(silent)), stream=True)
    assert [ev.type async for ev in stream] == ["transcript.text.done"]


async def test_chunking_strategy_on_a_short_silent_file_asks_no_backend(conv):
    """With ``chunking_strategy`` set the VAD decides what is speech (OpenAI's semantics): a short
    file it hears no speech in is an empty transcript without a whisper-server call (Whisper writes
    words on silence, e.g. "you"), streamed too; unset, the short file goes whole, as before, and a
    short file with speech goes whole either way (its text stays the whisper server's)."""
    log: list = []
    control: dict = {}
    client = make_client(router_app(log, control))
    silent = ("s.wav", wav(np.zeros(5 * SAMPLE_RATE, np.float32)))
    for strategy in ("auto", json.dumps({"type": "server_vad", "threshold": 0.6})):
        out = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=silent, response_format="diarized_json", chunking_strategy=strategy
        )
        assert out.text == "" and out.segments == []
    stream = await client.audio.transcriptions.create(
        model="whisper-1", file=silent, stream=True, chunking_strategy="auto"
    )
    assert [ev.type async for ev in stream] == ["transcript.text.done"]
    assert log == [] and not control.get("calls")
    await client.audio.transcriptions.create(model="whisper-1", file=silent)
    assert len(log) == 1  # unset: the whole file, as the whisper server alone would take it
    samples, _ = conv
    short = samples[: 8 * SAMPLE_RATE]
    out = await client.audio.transcriptions.create(
        model="whisper-1", file=("c.wav", wav(short)), chunking_strategy="auto"
    )
    assert len(log) == 2 and "low" in out.text


def test_words_outside_every_turn_take_the_segments_speaker():
    from server.core.transcript import Segment, SpeakerTurn, Word
    from server.router.merge import assign_speakers

    # the segment overlaps B's turn, but its words' times (a poor alignment) fall in a gap
    words = (Word(" hello", 0.0, 0.0), Word(" there", 0.0, 0.1))
    seg = Segment(0, 0.0, 4.0, " hello there", words=words)
    out = assign_speakers([seg], [SpeakerTurn(1.0, 4.0, "B", 0.9)])
    assert [s.speaker for s in out] == ["B"]
    assert out[0].text == " hello there"
