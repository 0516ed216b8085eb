"""Benchmark arithmetic: RTFx, latency percentiles, request summaries and WER.

Pure functions of plain numbers and strings, so every figure a benchmark reports can be traced
to (and unit-tested against) the raw measurements stored beside it in ``result.json``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

SPELLING_MAP_SOURCES = (
    ("whisper_normalizer", "normalizers/english.json"),
    ("whisper", "normalizers/english.json"),
)
"""Installed packages that ship openai/whisper's British → American spelling map (``english.json``):
``whisper-normalizer`` (installed with the sidecar's NeMo) and ``openai-whisper``."""


def rtfx(audio_s: float, wall_s: float) -> float:
    """Inverse real-time factor: seconds of audio processed per wall-clock second.

    Args:
        audio_s: audio transcribed (seconds).
        wall_s: wall-clock time it took (seconds).

    Returns:
        ``audio_s / wall_s`` (dimensionless; 10 means ten times faster than real time);
        ``nan`` when ``wall_s`` is not positive.
    """
    return audio_s / wall_s if wall_s > 0 else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values``: ``numpy.percentile`` (linear interpolation between the
    closest ranks), with ``nan`` for no values instead of numpy's error.

    Args:
        values: samples, in any unit (seconds for latencies).
        q: percentile in [0, 100].

    Returns:
        The percentile in the unit of ``values``; ``nan`` for no values.

    Raises:
        ValueError: ``q`` outside [0, 100].
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class RequestRecord:
    """One timed request (or one timed transcription of a file).

    Attributes:
        audio_s: duration of the audio sent (seconds).
        latency_s: wall-clock time from sending to the full response (seconds).
        ok: the request succeeded.
        error: exception class and message when it failed.
        item: which audio item (index into the audio set), for per-file breakdowns.
        text: the transcript returned (empty on failure).
    """

    audio_s: float
    latency_s: float
    ok: bool = True
    error: str | None = None
    item: int = -1
    text: str = ""


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict:
    """Aggregate a timed window of requests.

    Args:
        records: the requests completed in the window (successful and failed).
        wall_s: wall-clock length of the window (seconds), from the first request sent to the
            last response received.

    Returns:
        ``requests``, ``errors`` (counts); ``audio_s`` (seconds of audio in successful requests);
        ``wall_s`` (seconds); ``rtfx`` (``audio_s / wall_s``); ``requests_per_s`` (successful
        requests per second); ``latency_mean_s``, ``latency_p50_s``, ``latency_p95_s``,
        ``latency_p99_s``, ``latency_max_s`` over successful requests (seconds; ``nan`` if none).
    """
    ok = [r for r in records if r.ok]
    lat = [r.latency_s for r in ok]
    audio = sum(r.audio_s for r in ok)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "audio_s": audio,
        "wall_s": wall_s,
        "rtfx": rtfx(audio, wall_s),
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else math.nan,
        "latency_mean_s": sum(lat) / len(lat) if lat else math.nan,
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "latency_p99_s": percentile(lat, 99),
        "latency_max_s": max(lat) if lat else math.nan,
    }


# --------------------------------------------------------------------------------------------- WER


@cache
def english_spelling_map() -> tuple[dict[str, str], str]:
    """Whisper's British → American spelling map and where it came from.

    ``transformers`` ships the English normalizer's code but not its spelling map (it reads the
    map from a hub tokenizer's ``normalizer.json``); the map is taken from the first installed
    package of :data:`SPELLING_MAP_SOURCES`.

    Returns:
        ``(mapping, source)``: ~1,700 words and the file read, or ``({}, "none")`` when no package
        has it (spellings are then left as they are; every other rule still applies).
    """
    for package, relative in SPELLING_MAP_SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        path = Path(spec.origin).parent / relative
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8")), str(path)
    return {}, "none"


def text_normalizer(kind: str = "english") -> Callable[[str], str]:
    """Whisper's text normalizer, from ``transformers`` (a port of openai/whisper's normalizers).

    Args:
        kind: ``"english"`` (``EnglishTextNormalizer`` with the spelling map: lower-case, numbers
            and currencies to digits, contractions expanded, punctuation and fillers removed),
            ``"basic"`` (``BasicTextNormalizer``: lower-case, punctuation removed; for other
            languages) or ``"none"`` (whitespace collapsed only).

    Returns:
        A function ``str -> str``.

    Raises:
        ValueError: unknown ``kind``.
    """
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if kind == "english":
        return EnglishTextNormalizer(english_spelling_map()[0])
    if kind == "basic":
        return BasicTextNormalizer()
    if kind == "none":
        return lambda s: " ".join(s.split())
    raise ValueError(f"unknown normalizer {kind!r}: english | basic | none")


def word_error_rate(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalizer: Callable[[str], str] | str = "english",
) -> dict:
    """Corpus word error rate of ``hypotheses`` against ``references`` after normalization.

    Errors are summed over all pairs before dividing (corpus WER, as jiwer and the Open ASR
    leaderboard compute it), so long files weigh more than short ones. Pairs whose normalized
    reference is empty are left out and counted in ``skipped``.

    Args:
        references: ground-truth transcripts.
        hypotheses: transcripts to score, one per reference.
        normalizer: a ``str -> str`` function or a name for :func:`text_normalizer`.

    Returns:
        ``wer`` (fraction, 0.05 = 5 %; ``nan`` when nothing was scored), ``substitutions``,
        ``deletions``, ``insertions``, ``hits``, ``reference_words`` (counts), ``pairs`` (pairs
        scored), ``skipped``.

    Raises:
        ValueError: the two sequences differ in length.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    norm = text_normalizer(normalizer) if isinstance(normalizer, str) else normalizer
    refs, hyps = [], []
    for ref, hyp in zip(references, hypotheses):
        r, h = norm(ref).strip(), norm(hyp).strip()
        if r:
            refs.append(r)
            hyps.append(h)
    counts = {"substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0}
    if refs:
        out = jiwer.process_words(refs, hyps)
        counts = {key: int(getattr(out, key)) for key in counts}
    n_ref = counts["substitutions"] + counts["deletions"] + counts["hits"]
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    return {
        "wer": errors / n_ref if n_ref else math.nan,
        **counts,
        "reference_words": n_ref,
        "pairs": len(refs),
        "skipped": len(references) - len(refs),
    }


def fmt(value: float | None, digits: int = 2, *, percent: bool = False) -> str:
    """A number for a Markdown table: ``—`` for missing/NaN, ``percent`` multiplies by 100."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value * 100:.{digits}f}" if percent else f"{value:.{digits}f}"
