"""Diarization error rate of a sidecar backend on recordings with RTTM references.

    python -m bench.eval_der ../shared/data/pyannote_ami_dev00.wav ../shared/data/pyannote_ami_dev01.wav
    python -m bench.eval_der --espeak              # the synthetic two-voice conversation
    python -m bench.eval_der --diarizer sortformer --sortformer-model path/to/model.nemo X.wav

For ``X.wav`` the reference is ``X.rttm`` and the scored region ``X.uem`` (whole file when absent).
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

import click

from server.core.transcript import SpeakerTurn


def der(
    reference: Sequence[SpeakerTurn],
    hypothesis: Sequence[SpeakerTurn],
    *,
    uem: tuple[float, float] | None = None,
    collar: float = 0.0,
) -> dict[str, float]:
    """pyannote.metrics DER of ``hypothesis`` against ``reference`` turns (seconds).

    Returns ``{"der", "missed", "false_alarm", "confusion", "total"}``: rates in [0, ∞) and the
    seconds of reference speech.
    """
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: Sequence[SpeakerTurn]) -> Annotation:
        """Turns → a pyannote ``Annotation`` (one track per turn)."""
        ann = Annotation()
        for i, t in enumerate(turns):
            ann[Segment(t.start, t.end), i] = t.speaker
        return ann

    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    kwargs = {"uem": Timeline([Segment(*uem)])} if uem else {}
    detail = metric(annotation(reference), annotation(hypothesis), detailed=True, **kwargs)
    total = detail["total"] or 1e-9
    return {
        "der": detail["diarization error rate"],
        "missed": detail["missed detection"] / total,
        "false_alarm": detail["false alarm"] / total,
        "confusion": detail["confusion"] / total,
        "total": detail["total"],
    }


def read_uem(path: Path) -> tuple[float, float] | None:
    """First ``<file> <channel> <start> <end>`` line of a UEM file, or None when it has none."""
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            return float(parts[2]), float(parts[3])
    return None


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
    from torch_models.diarization import DiarizationOptions, parse_rttm

    if not files and not espeak:
        raise click.UsageError("give audio files with .rttm references, or --espeak")
    backend = build_diarizer(diarizer, sortformer_model, titanet_model)
    options = DiarizationOptions(num_speakers=num_speakers)
    rows = []
    cases: list[tuple[str, object, list[SpeakerTurn], tuple[float, float] | None]] = []
    for path in files:
        rttm = path.with_suffix(".rttm")
        if not rttm.exists():
            raise click.UsageError(f"no reference {rttm}")
        ref = [t for turns in parse_rttm(rttm.read_text()).values() for t in turns]
        uem_path = path.with_suffix(".uem")
        cases.append((path.name, lambda p=path: decode_audio(p.read_bytes()), ref,
                      read_uem(uem_path) if uem_path.exists() else None))
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
        rows.append({"file": name, **score, "speakers_ref": len({t.speaker for t in ref}),
                     "speakers_hyp": len(result.speakers), "seconds": len(samples) / 16000, "wall_s": wall})
        click.echo(f"{name:28s} DER {score['der']:6.1%}  (miss {score['missed']:.1%}, FA {score['false_alarm']:.1%}, "
                   f"conf {score['confusion']:.1%})  speakers {len(result.speakers)}/{rows[-1]['speakers_ref']}  "
                   f"{wall:.1f}s")
    total = sum(r["total"] for r in rows)
    overall = sum(r["der"] * r["total"] for r in rows) / max(total, 1e-9)
    click.echo(f"{'overall (speech-weighted)':28s} DER {overall:6.1%}  backend={diarizer} collar={collar:g}")
    if json_out:
        json_out.write_text(json.dumps({"backend": backend.describe(), "collar": collar, "files": rows,
                                        "overall_der": overall}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
