"""bench.diarization_der's joined cases (issue 14): clips played one after another as one longer
recording, each clip's reference turns and scored region moved by the clips before it."""

from __future__ import annotations

import numpy as np

from bench.diarization_der import joined_case
from server.core.transcript import SpeakerTurn


def test_joined_case_shifts_turns_and_scored_regions() -> None:
    from pyannote.core import Segment, Timeline

    a = (np.zeros(16000, np.float32), [SpeakerTurn(0.2, 0.8, "A")], Timeline([Segment(0.1, 0.9)]))
    b = (np.ones(32000, np.float32), [SpeakerTurn(0.5, 1.5, "A"), SpeakerTurn(1.0, 1.8, "B")], (0.0, 2.0))
    c = (np.zeros(8000, np.float32), [], None)
    samples, turns, region = joined_case([a, b, c])
    assert samples.shape == (56000,) and samples[16000:48000].all() and not samples[:16000].any()
    # one label is one speaker across clips (an AMI speaker id, a synthetic voice)
    assert [(t.start, t.end, t.speaker) for t in turns] == [(0.2, 0.8, "A"), (1.5, 2.5, "A"), (2.0, 2.8, "B")]
    assert [(s.start, s.end) for s in region] == [(0.1, 0.9), (1.0, 3.0), (3.0, 3.5)]


def test_router_eval_scores_the_sidecar_turns_from_the_file_start() -> None:
    """The sidecar hears a diarization window from its start (past leading non-speech once the file
    is over one chunk): bench.router_eval moves its turns by the window's offset before scoring, with
    the router's own ``shift_diarization`` (without it a 60 s file scored 126 % DER for the sidecar:
    its turns 5.8 s early)."""
    from server.router.clients import Diarization
    from server.router.pipeline import shift_diarization

    turns = (SpeakerTurn(0.0, 1.5, "speaker_0"), SpeakerTurn(1.0, 2.0, "speaker_1"))
    moved = shift_diarization(Diarization(turns, ("speaker_0", "speaker_1")), 5.75).turns
    assert [(t.start, t.end, t.speaker) for t in moved] == [(5.75, 7.25, "speaker_0"), (6.75, 7.75, "speaker_1")]


def test_router_eval_window_and_link_sweeps_need_an_in_process_run(tmp_path) -> None:
    """``--window-s`` / ``--link-threshold`` set the in-process ``Router``'s parameters; against a
    running router they would be silently ignored, so they are refused there."""
    from click.testing import CliRunner

    from bench.router_eval import main
    from server.core.audio import to_wav_bytes

    wav = tmp_path / "a.wav"
    wav.write_bytes(to_wav_bytes(np.zeros(16000, np.float32)))
    wav.with_suffix(".rttm").write_text("SPEAKER a 1 0.000 0.500 <NA> <NA> S1 <NA> <NA>\n")
    for extra in (["--window-s", "60"], ["--link-threshold", "0.6"]):
        out = CliRunner().invoke(main, [str(wav), *extra])
        assert out.exit_code == 2 and "in-process" in out.output
