"""Diarization core (options, intervals, RTTM, fingerprints, Sortformer post-processing); the pure
steps of the pyannote-style pipeline are in test_diarization_pipeline.py, the real-weight models
and backend in test_diarization_models.py."""

from __future__ import annotations

import io

import numpy as np
import pytest

from server.core.audio import SAMPLE_RATE
from server.core.transcript import SpeakerTurn
from torch_models.diarization import (
    DiarizationOptions,
    DiarizationResult,
    OptionError,
    merge_intervals,
    own_speech,
    relabel_by_first_appearance,
    speaker_fingerprints,
    subtract_intervals,
    to_rttm,
)
from torch_models.sortformer import parse_segment_lines, restrict_speakers, with_confidence

# --- options and intervals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "limit", "param"),
    [
        (DiarizationOptions(num_speakers=0), None, "num_speakers"),
        (DiarizationOptions(min_speakers=3, max_speakers=2), None, "min_speakers"),
        (DiarizationOptions(num_speakers=5, max_speakers=4), None, "num_speakers"),
        (DiarizationOptions(num_speakers=5), 4, "num_speakers"),
        (DiarizationOptions(min_speakers=5), 4, "min_speakers"),
    ],
)
def test_options_rejected_with_param(options, limit, param):
    with pytest.raises(OptionError) as info:
        options.validate(limit=limit)
    assert info.value.param == param


def test_options_bounds():
    assert DiarizationOptions().bounds(8) == (1, 8)
    assert DiarizationOptions(num_speakers=3).bounds(8) == (3, 3)
    assert DiarizationOptions(num_speakers=3).bounds(2) == (2, 2)
    assert DiarizationOptions(min_speakers=2, max_speakers=5).bounds(4) == (2, 4)
    assert DiarizationOptions(max_speakers=6).validate(limit=4).bounds(10) == (1, 6)  # max above limit is fine


def test_interval_algebra():
    assert merge_intervals([(3, 4), (0, 1), (0.5, 2), (2.05, 2.5)], gap=0.1) == [(0, 2.5), (3, 4)]
    assert subtract_intervals([(0, 10)], [(2, 3), (5, 6), (9, 12)]) == [(0, 2), (3, 5), (6, 9)]
    turns = [SpeakerTurn(0, 4, "a"), SpeakerTurn(3, 6, "b"), SpeakerTurn(5.5, 8, "a")]
    assert own_speech(turns, "a") == [(0, 3), (6, 8)]
    assert own_speech(turns, "b") == [(4, 5.5)]


def test_relabel_and_rttm_round_trip():
    turns = [SpeakerTurn(2.0, 3.0, "speaker_3", 0.9), SpeakerTurn(0.5, 1.5, "speaker_1", 0.8)]
    renamed, mapping = relabel_by_first_appearance(turns)
    assert mapping == {"speaker_1": "speaker_0", "speaker_3": "speaker_1"}
    assert [t.speaker for t in renamed] == ["speaker_0", "speaker_1"]
    result = DiarizationResult(renamed, ("speaker_0", "speaker_1"), 4.0, {})
    text = to_rttm(result, "my file")
    assert text.splitlines()[0] == "SPEAKER my_file 1 0.500 1.000 <NA> <NA> speaker_0 <NA> <NA>"
    from pyannote.database.util import load_rttm  # imports pandas: here, not at collection

    back = load_rttm(io.StringIO(text))["my_file"]  # read back by pyannote.database's RTTM loader
    assert [(s.start, s.end, label) for s, _, label in back.itertracks(yield_label=True)] == [
        (0.5, 1.5, "speaker_0"),
        (2.0, 3.0, "speaker_1"),
    ]


class _MeanEmbedder:
    """A fake embedder: the vector [mean, std, 1], normalised; records clip lengths."""

    name, dim = "fake", 3

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def embed(self, samples):
        self.lengths.append(len(samples))
        v = np.array([samples.mean(), samples.std(), 1.0], np.float32)
        return v / np.linalg.norm(v)


def test_fingerprints_use_own_speech_and_explain_missing_ones():
    samples = np.ones(10 * SAMPLE_RATE, np.float32)
    turns = [SpeakerTurn(0, 4, "speaker_0"), SpeakerTurn(3.8, 4.2, "speaker_1"), SpeakerTurn(5, 7, "speaker_1")]
    emb = _MeanEmbedder()
    prints, notes = speaker_fingerprints(samples, turns, emb)
    assert set(prints) == {"speaker_0", "speaker_1"} and notes == {}
    # speaker_0's own speech is 0–3.8 s, speaker_1's 4–4.2 s and 5–7 s (overlap excluded)
    assert emb.lengths == [int(3.8 * SAMPLE_RATE), int(0.2 * SAMPLE_RATE) + 2 * SAMPLE_RATE]
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 and len(v) == 3 for v in prints.values())
    prints, notes = speaker_fingerprints(samples, [SpeakerTurn(0, 0.4, "speaker_0")], emb)
    assert prints == {} and "0.40 s" in notes["speaker_0"]


# --- Sortformer post-processing (pure functions) --------------------------------------------------


def test_parse_segment_lines_sorts_and_clips():
    turns = parse_segment_lines(["1.000 2.500 speaker_1", "0.000 7.030 speaker_0", "6.990 7.200 speaker_2"], 7.0)
    assert [(t.start, t.end, t.speaker) for t in turns] == [
        (0.0, 7.0, "speaker_0"),
        (1.0, 2.5, "speaker_1"),
        (6.99, 7.0, "speaker_2"),
    ]
    with pytest.raises(ValueError):
        parse_segment_lines(["1.0 speaker_0"])


def test_confidence_is_mean_probability_over_the_turn_frames():
    # 10 s at 12.5 frames/s; speaker 0 certain for 0–4 s, speaker 1 at 0.6 for 4–8 s
    probs = np.zeros((125, 4), np.float32)
    probs[:50, 0] = 1.0
    probs[50:100, 1] = 0.6
    turns = with_confidence(
        [SpeakerTurn(0, 4, "speaker_0"), SpeakerTurn(4, 8, "speaker_1"), SpeakerTurn(2, 6, "speaker_0")], probs, 10.0
    )
    assert [round(t.confidence, 4) for t in turns] == [1.0, 0.6, 0.5]
    assert with_confidence(turns, None, 10.0)[0].confidence is None
    assert with_confidence([SpeakerTurn(0, 1, "speaker_9")], probs, 10.0)[0].confidence is None


def test_restrict_speakers_reassigns_to_most_probable_kept_speaker():
    probs = np.zeros((125, 4), np.float32)
    probs[:50, 0] = 0.9
    probs[50:100, 1] = 0.9
    probs[100:, 2] = 0.7  # a third, short speaker that sounds like speaker 1
    probs[100:, 1] = 0.4
    turns = with_confidence(
        [SpeakerTurn(0, 4, "speaker_0"), SpeakerTurn(4, 8, "speaker_1"), SpeakerTurn(8, 10, "speaker_2")], probs, 10.0
    )
    out = restrict_speakers(turns, probs, 10.0, keep=2)
    assert [(t.start, t.end, t.speaker) for t in sorted(out, key=lambda t: t.start)] == [
        (0, 4, "speaker_0"),
        (4, 10, "speaker_1"),
    ]
    merged = [t for t in out if t.speaker == "speaker_1"][0]
    assert 0.4 < merged.confidence < 0.9


# --- the mixer of the synthetic meetings (torch_models.synth) -----------------------------------


def test_mix_lines_adds_lines_over_one_another_and_keeps_each_lines_turn():
    from torch_models.synth import mix_lines

    a = np.full(1600, 0.4, np.float32)  # 0.1 s each
    b = np.full(1600, 0.6, np.float32)
    mix = mix_lines([(0, a, "A"), (800, b, "B")])
    # 0.5 s of silence after the last line; the overlap sums to 1.0, the peak, normalised to 0.5
    assert mix.samples.dtype == np.float32 and mix.samples.shape == (2400 + SAMPLE_RATE // 2,)
    assert np.allclose(mix.samples[:800], 0.2) and np.allclose(mix.samples[800:1600], 0.5)
    assert np.allclose(mix.samples[1600:2400], 0.3) and not mix.samples[2400:].any()
    assert mix.turns == (SpeakerTurn(0.0, 0.1, "A"), SpeakerTurn(0.05, 0.15, "B"))
    # turns keep the order of the lines given; a set length cuts the audio, not the turns
    cut = mix_lines([(800, b, "B"), (0, a, "A")], length=2000, peak=1.0)
    assert cut.samples.shape == (2000,) and np.allclose(cut.samples[800:1600], 1.0)
    assert cut.turns == (SpeakerTurn(0.05, 0.15, "B"), SpeakerTurn(0.0, 0.1, "A"))
    with pytest.raises(ValueError):
        mix_lines([])
    with pytest.raises(ValueError):
        mix_lines([(-1, a, "A")])
