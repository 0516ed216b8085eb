"""Diarization error rate of a sidecar backend on recordings with RTTM references.

    python -m bench.eval_der ../shared/data/pyannote_ami_dev00.wav ../shared/data/pyannote_ami_dev01.wav
    python -m bench.eval_der --espeak              # the synthetic two-voice conversation
    python -m bench.eval_der --diarizer sortformer --sortformer-model path/to/model.nemo X.wav

For ``X.wav`` the reference is ``X.rttm`` and the scored region ``X.uem`` (whole file when absent), read
by pyannote.database's RTTM and UEM loaders.
The per-clip table of the default backend (AMI clips and the 305 s espeak conversation, collar 0 and
0.25 s, written to bench/results/) is ``python -m bench.diarization_der``.
DER is pyannote.metrics' ``DiarizationErrorRate`` (missed + false alarm + confusion over reference
speech), with no forgiveness collar and overlap scored, unless ``--collar`` is given.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from server.core.transcript import SpeakerTurn

if TYPE_CHECKING:
    from pyannote.core import Annotation, Timeline


def annotation(turns: Sequence[SpeakerTurn]) -> Annotation:
    """Turns (seconds) → a pyannote.core ``Annotation``, one track per turn."""
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for i, t in enumerate(turns):
        ann[Segment(t.start, t.end), i] = t.speaker
    return ann


def read_reference(wav: Path) -> tuple[list[SpeakerTurn], Timeline | None]:
    """The reference of ``X.wav``: the turns of ``X.rttm`` (of every file id in it), in time order, and
    the scored region ``X.uem`` (``None`` when absent), read by pyannote.database's loaders.

    Raises:
        FileNotFoundError: there is no ``X.rttm``.
    """
    from pyannote.database.util import load_rttm, load_uem

    rttm, uem = wav.with_suffix(".rttm"), wav.with_suffix(".uem")
    if not rttm.is_file():
        raise FileNotFoundError(f"no reference {rttm}")
    turns = [
        SpeakerTurn(seg.start, seg.end, str(label))
        for ann in load_rttm(str(rttm)).values()
        for seg, _, label in ann.itertracks(yield_label=True)
    ]
    region = None
    if uem.is_file():
        from pyannote.core import Timeline

        region = Timeline([seg for tl in load_uem(str(uem)).values() for seg in tl])
    return sorted(turns, key=lambda t: (t.start, t.end)), region


def der(
    reference: Sequence[SpeakerTurn],
    hypothesis: Sequence[SpeakerTurn],
    *,
    uem: Timeline | tuple[float, float] | None = None,
    collar: float = 0.0,
) -> dict[str, float]:
    """pyannote.metrics DER of ``hypothesis`` against ``reference`` turns (seconds), scored over
    ``uem``: a ``Timeline``, one ``(start, end)`` span in seconds, or ``None`` for the extent of both.

    Returns ``{"der", "missed", "false_alarm", "confusion", "total"}``: rates in [0, ∞) and the
    seconds of reference speech.
    """
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    if isinstance(uem, tuple):
        uem = Timeline([Segment(*uem)])
    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    kwargs = {"uem": uem} if uem else {}
    detail = metric(annotation(reference), annotation(hypothesis), detailed=True, **kwargs)
    total = detail["total"] or 1e-9
    return {
        "der": detail["diarization error rate"],
        "missed": detail["missed detection"] / total,
        "false_alarm": detail["false alarm"] / total,
        "confusion": detail["confusion"] / total,
        "total": detail["total"],
    }


def build_diarizer(diarizer: str, sortformer_model: str | None, titanet_model: str | None):
    """A backend from the sidecar's own settings (the same code path as ``chorus serve sidecar``)."""
    from torch_models.service import build_diarizer as build
    from torch_models.settings import SidecarSettings

    overrides = {"diarizer": diarizer}
    if sortformer_model:
        overrides["sortformer_model"] = sortformer_model
    if titanet_model:
        overrides["titanet_model"] = titanet_model
    return build(SidecarSettings(**overrides))


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--espeak", is_flag=True, help="Also score the synthetic two-voice espeak-ng conversation.")
@click.option("--diarizer", type=click.Choice(["pyannote", "sortformer"]), default="pyannote", show_default=True)
@click.option("--sortformer-model", default=None, help="Hub id or .nemo path (sortformer backend).")
@click.option("--titanet-model", default=None, help="Hub id or .nemo path (sortformer backend).")
@click.option("--num-speakers", type=int, default=None, help="Pass the true count instead of estimating it.")
@click.option("--collar", type=float, default=0.0, show_default=True, help="Forgiveness collar (seconds).")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(files, espeak, diarizer, sortformer_model, titanet_model, num_speakers, collar, json_out) -> None:
    """Print the DER of each file and of all files together (time-weighted)."""
    from server.core.audio import decode_audio
    from torch_models.diarization import DiarizationOptions

    if not files and not espeak:
        raise click.UsageError("give audio files with .rttm references, or --espeak")
    backend = build_diarizer(diarizer, sortformer_model, titanet_model)
    options = DiarizationOptions(num_speakers=num_speakers)
    rows = []
    cases: list[tuple[str, object, list[SpeakerTurn], Timeline | tuple[float, float] | None]] = []
    for path in files:
        try:
            ref, uem = read_reference(path)
        except FileNotFoundError as exc:
            raise click.UsageError(str(exc)) from exc
        cases.append((path.name, lambda p=path: decode_audio(p.read_bytes()), ref, uem))
    if espeak:
        from torch_models.synth import conversation

        conv = conversation()
        cases.append(("espeak_two_voices", lambda: conv.samples, list(conv.turns), (0.0, conv.duration)))
    for name, load, ref, uem in cases:
        samples = load()
        t0 = time.perf_counter()
        result = backend.diarize(samples, options)
        wall = time.perf_counter() - t0
        score = der(ref, result.segments, uem=uem, collar=collar)
        rows.append(
            {
                "file": name,
                **score,
                "speakers_ref": len({t.speaker for t in ref}),
                "speakers_hyp": len(result.speakers),
                "seconds": len(samples) / 16000,
                "wall_s": wall,
            }
        )
        click.echo(
            f"{name:28s} DER {score['der']:6.1%}  (miss {score['missed']:.1%}, FA {score['false_alarm']:.1%}, "
            f"conf {score['confusion']:.1%})  speakers {len(result.speakers)}/{rows[-1]['speakers_ref']}  "
            f"{wall:.1f}s"
        )
    total = sum(r["total"] for r in rows)
    overall = sum(r["der"] * r["total"] for r in rows) / max(total, 1e-9)
    click.echo(f"{'overall (speech-weighted)':28s} DER {overall:6.1%}  backend={diarizer} collar={collar:g}")
    if json_out:
        json_out.write_text(
            json.dumps(
                {"backend": backend.describe(), "collar": collar, "files": rows, "overall_der": overall}, indent=2
            )
        )


if __name__ == "__main__":
    sys.exit(main())
