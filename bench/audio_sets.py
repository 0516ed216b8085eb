"""Audio for benchmarks: generated speech of fixed lengths, directories with references, shared data.

An audio spec (``--audio``, repeatable) is one of:

- ``espeak:5,30,300``: espeak-ng speech of exactly those lengths (seconds), with transcripts, made
  once into ``<cache>/bench/audio`` from the Harvard sentences (IEEE 1969 phonetically balanced
  sentences), cut only between sentences and padded with silence to the exact length;
- ``espeak-repeat:60,90``: the same, from one paragraph (``PARAGRAPH``) said over and over: the
  transcript of a 30 s window is itself repetitive, so Whisper's compression-ratio check fails and
  every window falls back through the temperatures;
- ``real:60,90``: real speech: the shared recordings that have a ``.txt`` transcript (LJSpeech,
  pocketsphinx, speechbrain; about 11 s in all) joined in turn, with ``CLIP_GAP_S`` of silence,
  into files of those lengths (the clips recur: there is not more referenced real speech), with
  their transcripts joined the same way;
- ``meeting:60,90``: the shared AMI meeting clips (``*.rttm``, no transcript) joined the same way;
  no WER, RTFx only;
- a workload name from ``WORKLOADS`` (``varied``, ``repeated``, ``real``, ``meeting``, and their
  ``-small`` variants that fit on a shared 2-core machine): one of the specs above;
- ``shared``: ``/work/shared/data`` (or ``$CHORUS_SHARED_DATA``), real recordings;
- a directory: every audio file in it, each with ``<stem>.txt`` as its reference when present;
- a file: that file (and ``<stem>.txt`` beside it, when present).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.audio import SAMPLE_RATE, decode_audio, duration_s, to_wav_bytes
from torch_models.synth import espeak_available, speak

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".webm", ".mp4", ".opus", ".mpga"})
ESPEAK_VOICE = "en-us"
ESPEAK_SPEED = 160  # words per minute
SENTENCE_GAP_S = 0.35  # silence between sentences (seconds)
ESPEAK_VERSION = 1  # bump when the generation below changes, so cached files are remade
CLIP_GAP_S = 0.5  # silence between joined real clips (seconds)

HARVARD_SENTENCES = (
    # Lists 1–7 of the Harvard sentences (IEEE Recommended Practice for Speech Quality
    # Measurements, 1969), a public-domain staple of speech testing.
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    "The frosty air passed through the coat.",
    "The crooked maze failed to fool the mouse.",
    "Adding fast leads to wrong sums.",
    "The show was a flop from the very start.",
    "A saw is a tool used for making boards.",
    "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.",
    "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.",
    "Both lost their lives in the raging storm.",
    "We talked of the side show in the circus.",
    "Use a pencil to write the first draft.",
    "He ran half way to the hardware store.",
    "The clock struck to mark the third period.",
    "A small creek cut across the field.",
    "Cars and busses stalled in snow drifts.",
    "The set of china hit the floor with a crash.",
    "This is a grand season for hikes on the road.",
    "The dune rose from the edge of the water.",
    "Those words were the cue for the actor to leave.",
)


PARAGRAPH = HARVARD_SENTENCES[:5]
"""The paragraph ``espeak-repeat:`` says over and over (Harvard list 1, sentences 1–5)."""

WORKLOADS = {
    # issue 15's three workloads: 8 files of 42–66 s each (438 s), as its measurements used
    "varied": "espeak:42,45,51,54,57,60,63,66",
    "repeated": "espeak-repeat:42,45,51,54,57,60,63,66",
    "real": "real:42,45,51,54,57,60,63,66",
    "meeting": "meeting:61,62,63,64,65,66,67,68",  # AMI clips are 30 s: two per file
    # the same kinds, small enough for a 2-core machine shared with other work (8 files, 160 s;
    # meetings 4 × 30 s)
    "varied-small": "espeak:15,17,18,19,20,21,24,26",
    "repeated-small": "espeak-repeat:15,17,18,19,20,21,24,26",
    "real-small": "real:15,17,18,19,20,21,24,26",
    "meeting-small": "meeting:31,32,33,34",  # one whole AMI clip each
}
"""Named audio specs for ``--audio NAME`` (see the module docstring)."""


@dataclass(frozen=True)
class AudioItem:
    """One benchmark file.

    Attributes:
        path: the audio file (any format ``server.core.audio.decode_audio`` reads).
        duration_s: its length after decoding (seconds).
        reference: the reference transcript, or ``None`` when there is none (no WER then).
    """

    path: Path
    duration_s: float
    reference: str | None = None

    @property
    def name(self) -> str:
        """The file name (what the throughput bench uploads it as)."""
        return self.path.name

    def to_json(self) -> dict:
        """A JSON-serialisable dict (``from_json`` reverses it)."""
        return {"path": str(self.path), "duration_s": self.duration_s, "reference": self.reference}

    @staticmethod
    def from_json(d: dict) -> AudioItem:
        """The item ``to_json`` produced."""
        return AudioItem(Path(d["path"]), float(d["duration_s"]), d.get("reference"))


def shared_data_dir() -> Path:
    """``$CHORUS_SHARED_DATA``, else the ``shared/data`` directory beside the repository."""
    env = os.environ.get("CHORUS_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def read_reference(audio: Path) -> str | None:
    """The text of ``<stem>.txt`` beside ``audio`` (stripped), or ``None`` when absent/empty."""
    ref = audio.with_suffix(".txt")
    if ref.is_file():
        text = ref.read_text(encoding="utf-8").strip()
        return text or None
    return None


def file_item(path: Path) -> AudioItem:
    """An :class:`AudioItem` for one file; decodes it once to measure its duration."""
    return AudioItem(path, duration_s(decode_audio(path.read_bytes())), read_reference(path))


def directory_items(directory: Path) -> list[AudioItem]:
    """Every audio file directly in ``directory`` (sorted by name), with ``.txt`` references.

    Raises:
        FileNotFoundError: ``directory`` holds no audio file.
    """
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {directory}")
    return [file_item(p) for p in files]


def espeak_item(
    length_s: float,
    out_dir: Path,
    *,
    voice: str = ESPEAK_VOICE,
    speed: int = ESPEAK_SPEED,
    sentences: tuple[str, ...] = HARVARD_SENTENCES,
) -> AudioItem:
    """Generated speech of exactly ``length_s`` seconds and its transcript (cached in ``out_dir``).

    Sentences are taken in order (starting at a position that depends on the length, so sets of
    different lengths do not all open with the same words, and cycling when needed); a sentence that
    would overrun the length is skipped, and the end is padded with silence. Nothing is cut mid-word,
    so the transcript is exact.

    Args:
        length_s: duration of the file (seconds, ≥ 1).
        out_dir: where ``espeak-<length>s-<hash>.wav`` and its ``.txt`` are kept.
        voice: espeak-ng voice.
        speed: words per minute.
        sentences: the text to draw from.

    Returns:
        The item (16 kHz mono 16-bit WAV).

    Raises:
        RuntimeError: espeak-ng is not installed.
        ValueError: ``length_s`` is below one second.
    """
    if length_s < 1:
        raise ValueError("espeak audio must be at least 1 s long")
    key = repr((ESPEAK_VERSION, length_s, voice, speed, sentences)).encode()
    stem = f"espeak-{length_s:g}s-{hashlib.sha256(key).hexdigest()[:8]}"
    wav, txt = out_dir / f"{stem}.wav", out_dir / f"{stem}.txt"
    if wav.is_file() and txt.is_file():
        return AudioItem(wav, duration_s(decode_audio(wav.read_bytes())), txt.read_text(encoding="utf-8").strip())
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    target = int(round(length_s * SAMPLE_RATE))
    gap = np.zeros(int(SENTENCE_GAP_S * SAMPLE_RATE), np.float32)
    pieces, chosen, used = _fill(
        len(sentences),
        int(length_s) % len(sentences),
        target,
        gap,
        lambda k: speak(sentences[k], voice, wpm=speed),
        stop_below=SAMPLE_RATE,  # no sentence is shorter than a second
    )
    words = [sentences[k] for k in chosen]
    if not words:
        raise ValueError(f"no sentence fits in {length_s:g} s")
    samples = np.concatenate([*pieces, np.zeros(target - used, np.float32)])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_wav = wav.with_suffix(".wav.tmp")
    tmp_wav.write_bytes(to_wav_bytes(samples))
    txt.write_text(" ".join(words) + "\n", encoding="utf-8")
    tmp_wav.replace(wav)
    return AudioItem(wav, duration_s(samples), " ".join(words))


def _fill(
    count: int, start: int, target: int, gap: np.ndarray, get: Callable[[int], np.ndarray], stop_below: int = 0
) -> tuple[list[np.ndarray], list[int], int]:
    """Pack items ``get(k)`` (float32 16 kHz samples), taken in turn from ``start`` and cycling, into at
    most ``target`` samples with ``gap`` between them; an item that would overrun is skipped, and the
    packing ends once every item in a row was skipped or fewer than ``stop_below`` samples are left.

    Returns:
        ``(pieces, chosen, used)``: the arrays to concatenate (gaps included), the item index of each
        item taken, in order, and the samples they fill.
    """
    pieces: list[np.ndarray] = []
    chosen: list[int] = []
    used, misses, i = 0, 0, start
    while misses < count:
        k = i % count
        i += 1
        item = get(k)
        need = item.size + (gap.size if pieces else 0)
        if used + need > target:
            misses += 1
            continue
        misses = 0
        if pieces:
            pieces.append(gap)
        pieces.append(item)
        chosen.append(k)
        used += need
        if stop_below and target - used < stop_below:
            break
    return pieces, chosen, used


def referenced_clips(directory: Path) -> list[AudioItem]:
    """The recordings in ``directory`` that have a ``<stem>.txt`` transcript, sorted by name."""
    return [it for it in directory_items(directory) if it.reference is not None]


def meeting_clips(directory: Path) -> list[AudioItem]:
    """The recordings in ``directory`` with a diarization reference (``<stem>.rttm``: AMI), sorted."""
    return [it for it in directory_items(directory) if it.path.with_suffix(".rttm").is_file()]


def joined_item(clips: list[AudioItem], length_s: float, out_dir: Path, kind: str) -> AudioItem:
    """Real clips joined into one file of exactly ``length_s`` seconds (cached in ``out_dir``).

    Clips are taken in turn, starting at a position that depends on the length (as
    ``espeak_item`` does with sentences) and cycling when needed, ``CLIP_GAP_S`` of silence
    between them; a clip that would overrun the length is skipped, the end padded with silence.
    The reference is the clips' references joined with spaces, or ``None`` when a clip has none.

    Args:
        clips: the recordings (any rate; decoded to 16 kHz mono).
        length_s: duration of the file (seconds).
        out_dir: where ``<kind>-<length>s-<hash>.wav`` and its ``.txt`` are kept.
        kind: the file name's prefix (``real``, ``meeting``).

    Raises:
        ValueError: no clips, or none fits in ``length_s``.
    """
    if not clips:
        raise ValueError(f"no clips for {kind}: {shared_data_dir()} holds none")
    key = repr((length_s, CLIP_GAP_S, [(str(c.path), c.duration_s, c.reference) for c in clips])).encode()
    stem = f"{kind}-{length_s:g}s-{hashlib.sha256(key).hexdigest()[:8]}"
    wav, txt = out_dir / f"{stem}.wav", out_dir / f"{stem}.txt"
    has_text = all(c.reference is not None for c in clips)
    if wav.is_file() and (txt.is_file() or not has_text):
        ref = txt.read_text(encoding="utf-8").strip() if has_text else None
        return AudioItem(wav, duration_s(decode_audio(wav.read_bytes())), ref)
    audio = [decode_audio(c.path.read_bytes()) for c in clips]
    target = int(round(length_s * SAMPLE_RATE))
    gap = np.zeros(int(CLIP_GAP_S * SAMPLE_RATE), np.float32)
    pieces, chosen, used = _fill(len(clips), int(length_s) % len(clips), target, gap, audio.__getitem__)
    refs = [clips[k].reference or "" for k in chosen]
    if not pieces:
        raise ValueError(f"no {kind} clip fits in {length_s:g} s")
    samples = np.concatenate([*pieces, np.zeros(target - used, np.float32)])
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = " ".join(refs) if has_text else None
    if reference is not None:
        txt.write_text(reference + "\n", encoding="utf-8")
    tmp_wav = wav.with_suffix(".wav.tmp")
    tmp_wav.write_bytes(to_wav_bytes(samples))
    tmp_wav.replace(wav)
    return AudioItem(wav, duration_s(samples), reference)


def _lengths(spec: str, kind: str) -> list[float]:
    try:
        return [float(x) for x in spec.removeprefix(f"{kind}:").split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bad audio spec {spec!r}: expected {kind}:5,30,300 (seconds)") from None


def resolve_audio(specs: Iterable[str], cache_dir: Path) -> list[AudioItem]:
    """Turn ``--audio`` specs (see the module docstring) into items, in the order given.

    Args:
        specs: ``espeak:<s>,<s>…``, ``espeak-repeat:…``, ``real:…``, ``meeting:…``, a name
            from ``WORKLOADS``, ``shared``, directories or files.
        cache_dir: Chorus's cache directory; generated speech goes to ``<cache_dir>/bench/audio``.

    Returns:
        The items; a file named twice is kept once.

    Raises:
        FileNotFoundError: a path that does not exist, or a directory without audio.
        ValueError: a malformed ``espeak:``/``real:``/… spec, no shared clips for ``real:`` or
            ``meeting:``, or no items at all.
    """
    items: list[AudioItem] = []
    out_dir = cache_dir / "bench" / "audio"
    for spec in specs:
        spec = WORKLOADS.get(spec, spec)
        if spec.startswith("espeak:"):
            items += [espeak_item(s, out_dir) for s in _lengths(spec, "espeak")]
        elif spec.startswith("espeak-repeat:"):
            items += [espeak_item(s, out_dir, sentences=PARAGRAPH) for s in _lengths(spec, "espeak-repeat")]
        elif spec.startswith("real:"):
            clips = referenced_clips(shared_data_dir())
            items += [joined_item(clips, s, out_dir, "real") for s in _lengths(spec, "real")]
        elif spec.startswith("meeting:"):
            clips = meeting_clips(shared_data_dir())
            items += [joined_item(clips, s, out_dir, "meeting") for s in _lengths(spec, "meeting")]
        elif spec == "shared":
            items += directory_items(shared_data_dir())
        else:
            path = Path(spec).expanduser()
            if path.is_dir():
                items += directory_items(path)
            elif path.is_file():
                items.append(file_item(path))
            else:
                raise FileNotFoundError(f"no such audio file or directory: {spec}")
    seen: set[Path] = set()
    unique = [it for it in items if not (it.path.resolve() in seen or seen.add(it.path.resolve()))]
    if not unique:
        raise ValueError(
            "no audio: pass --audio espeak:5,30 | varied | repeated | real | meeting | shared | DIR | FILE"
        )
    return unique


def describe(items: list[AudioItem]) -> dict:
    """Summary of an audio set for the result record: files, total seconds, how many have references."""
    return {
        "files": len(items),
        "total_s": round(sum(it.duration_s for it in items), 3),
        "with_reference": sum(it.reference is not None for it in items),
        "items": [it.to_json() for it in items],
    }
