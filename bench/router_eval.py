"""Score the router's speaker-attributed transcripts: DER, WER and cpWER.

    chorus up &                                   # or any running router
    python -m bench.router_eval --url http://127.0.0.1:8000 --collar 0 --collar 0.25 \\
        ../shared/data/pyannote_ami_dev00.wav ../shared/data/pyannote_ami_dev01.wav --espeak-long

For ``X.wav`` the diarization reference is ``X.rttm`` and the scored region ``X.uem``; with
``X.txt`` present the WER is scored too. ``--espeak-long`` builds a five-minute two-voice espeak-ng
conversation with a known script and turn boundaries and scores DER, WER and cpWER (meeteval).
``--overlap-meetings N`` adds N synthetic ~30 s meetings with overlapped speech (interruptions,
backchannels under another voice, two voices over the same seconds; ``overlapped_meeting``).

Without a running router, ``--whisper-url`` and ``--sidecar-url`` run the router's own pipeline
(``server.router.pipeline.Router``, the Job a ``diarized_json`` request makes) in this process
against the two backends, and also score the sidecar's own turns on the same file, each split into
missed / false alarm / confusion. With ``--cache DIR`` every backend answer is kept (pickled, keyed
by the audio and the request) and replayed on the next run, so the merge can be iterated on without
the backends (``--cache DIR`` alone replays):

    python -m bench.router_eval --whisper-url http://127.0.0.1:8001 --sidecar-url http://127.0.0.1:8002 \
        --cache /tmp/router-cache --collar 0.25 ../shared/data/pyannote_ami_dev00.wav --overlap-meetings 6

In-process runs also take ``--window-s`` (cap the diarization window below the sidecar's, so a file
is diarized in several windows whose local speakers the router links) and ``--link-threshold``
(repeatable: one run per value on the same cached backend answers), to see how linking holds:

    python -m bench.router_eval --cache /tmp/router-cache --collar 0.25 --window-s 60 \
        --link-threshold 0.6 --link-threshold 0.66 long_meeting.wav

The hypothesis is what a client gets: the ``diarized_json`` segments (their times and speakers),
so the DER includes the segment granularity of the transcript, not only the diarizer's turns.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from server.core.transcript import SpeakerTurn

if TYPE_CHECKING:
    from pyannote.core import Timeline

# Two colleagues planning their week: 62 alternating lines, about 5 minutes with the pauses below.
LONG_DIALOGUE: tuple[str, ...] = (
    "Good morning. Did you have time to read the report I sent you yesterday?",
    "Yes, I read it last night, and I have a few questions about the second part.",
    "Of course. Which numbers looked strange to you?",
    "The travel costs doubled, but the number of trips stayed almost the same.",
    "That is because flights became much more expensive in the spring.",
    "I see. Should we plan fewer meetings in person next quarter?",
    "I think we should. We can move the weekly review to a video call.",
    "Good idea. I will update the budget and send you a new draft on Friday.",
    "Thank you. Can we also talk about the new office in the city centre?",
    "Sure. The landlord called me this morning about the contract.",
    "What did he say? Is the price still the same as last month?",
    "He wants a little more money, but he will paint the walls and fix the heating.",
    "That sounds fair. How many people can work there at the same time?",
    "About twenty people, if we put the desks close to the windows.",
    "Then we need to order new chairs and a large table for the meeting room.",
    "I already asked two shops for prices. The second one was much cheaper.",
    "Great. When can the team move into the new place?",
    "If we sign the contract this week, we can move at the start of next month.",
    "Let us do that. I will read the contract tonight and sign it tomorrow.",
    "Perfect. There is one more thing. The customer from Berlin wrote to me.",
    "Was he happy with the last delivery? I heard there was a small problem.",
    "Two boxes arrived late, but everything inside was in good condition.",
    "We should call him and say sorry. Maybe we can offer a small discount.",
    "I agree. I will call him after lunch and offer ten percent on the next order.",
    "Good. What about the new website? Is the design ready yet?",
    "The designer sent three versions. I like the blue one the most.",
    "Can you show them to me later? I want to see the pages on my phone too.",
    "Yes, I will send you the links in an email before the end of the day.",
    "Thanks. Do we have enough people to test the website next week?",
    "We have four people from the support team, and two students can help us.",
    "That should be enough. Please write a short list of things they need to check.",
    "I will. They should test the shop, the search, and the contact form.",
    "Also ask them to try it on old computers. Many of our customers use them.",
    "Good point. I will add that to the list and share it with the team.",
    "Now let us talk about the summer. Who is taking holidays in July?",
    "Three people asked for two weeks in July, and one person asked for August.",
    "We need at least two people in the office every day during the summer.",
    "I will make a plan and check that someone is always here to answer the phone.",
    "Thank you. And what about the training for the new colleagues?",
    "The first session is on Monday morning. It will take about three hours.",
    "Who will teach it? I hope it is not the same person as last time.",
    "No, this time our best engineer will explain the system step by step.",
    "Wonderful. Please ask her to record the session for people who cannot come.",
    "I will ask her today. We can put the video on the shared drive.",
    "Very good. I think that is everything for the office and the team.",
    "Wait, we forgot the car. The company car needs new tyres before winter.",
    "You are right. How much do new tyres cost these days?",
    "The garage said about four hundred euros, including the work.",
    "That is fine. Please book a time for next Tuesday if they are free.",
    "I will call the garage after I call the customer from Berlin.",
    "Thank you for all your work this week. You have been very helpful.",
    "You are welcome. It was a busy week, but we finished a lot of things.",
    "Let us meet again on Thursday to check the budget and the contract.",
    "Thursday at ten is good for me. I will book the small meeting room.",
    "Great. Have a nice lunch, and do not forget to call the garage.",
    "One last question. Did you send the invoice to the school in the north?",
    "Yes, I sent it on Monday, and they promised to pay it by the end of the month.",
    "Good. Last year they paid very late, so please keep an eye on it.",
    "I will check the bank account every Friday and tell you when the money arrives.",
    "Thank you. I think we are finally done for today.",
    "I will not forget the garage. See you on Thursday, and have a nice day.",
)
LONG_PAUSES_S = (0.9, 0.6, 1.2, 0.7)


@dataclass(frozen=True)
class Reference:
    """What a recording should give: speaker turns, optionally the words of each turn, the scored region."""

    turns: tuple[SpeakerTurn, ...]
    texts: tuple[str, ...] | None = None  # one per turn, same order
    uem: Timeline | None = None


def long_conversation():
    """The five-minute two-voice espeak-ng conversation: ``(samples, Reference)`` (needs espeak-ng)."""
    from torch_models.synth import conversation

    lines = [("A" if i % 2 == 0 else "B", text) for i, text in enumerate(LONG_DIALOGUE)]
    conv = conversation(lines, pauses_s=LONG_PAUSES_S)
    return conv.samples, Reference(conv.turns, LONG_DIALOGUE)


BACKCHANNELS: tuple[str, ...] = ("Yeah.", "Right.", "Okay.", "Mm-hmm.", "I see.", "Sure.", "Exactly.", "Uh-huh.")


def overlapped_meeting(seed: int, *, max_s: float = 30.5, voices: Sequence[str] = ("A", "B", "C")):
    """A synthetic ~30 s espeak-ng meeting with overlapped speech: ``(samples, Reference)``.

    Lines of ``LONG_DIALOGUE`` (from a seed-dependent start) by the voices of
    ``torch_models.synth.VOICES``, each starting in one of three ways: after a pause (0.2-0.8 s);
    interrupting the previous line 0.4-1.2 s before its end; or spoken under it from 30-60 % of
    the way in (two voices over the same seconds). About a third of the lines get a backchannel
    (``BACKCHANNELS``) by another voice in their middle. Voices that start under another are mixed
    1-6 dB quieter, as a second voice in a meeting often is. The reference turns are each line's
    span above an energy floor (``speech_span``), with its text; the meeting ends 0.5 s after its last
    line and is at most ``max_s`` seconds (so the router sends it to the whisper server whole).

    Args:
        seed: numpy ``default_rng`` seed: which lines, who speaks, how each line starts, levels.
        max_s: longest meeting (seconds).
        voices: keys of ``VOICES`` taking part.
    """
    import numpy as np

    from server.core.audio import SAMPLE_RATE
    from torch_models.synth import VOICES, mix_lines, spoken_line

    rng = np.random.default_rng(seed)
    sr = SAMPLE_RATE

    def line(who: str, text: str) -> np.ndarray:
        audio = spoken_line(text, *VOICES[who])
        return audio * (0.1 / max(1e-6, float(np.sqrt(np.mean(audio**2)))))  # equal loudness (RMS)

    placed: list[tuple[float, np.ndarray, str, str]] = []  # (start s, samples, speaker, text)
    k = int(rng.integers(len(LONG_DIALOGUE)))
    prev_who, prev_start, prev_end = None, 0.0, 0.5
    while prev_end < max_s - 3.0:
        who = str(rng.choice([v for v in voices if v != prev_who]))
        text = LONG_DIALOGUE[k % len(LONG_DIALOGUE)]
        k += 1
        audio = line(who, text)
        n = audio.shape[0] / sr
        mode = rng.choice(["pause", "interrupt", "under"], p=[0.45, 0.35, 0.2]) if placed else "pause"
        gain = 1.0
        if mode == "pause":
            start = prev_end + rng.uniform(0.2, 0.8)
        elif mode == "interrupt":
            start = max(prev_start + 0.5, prev_end - rng.uniform(0.4, 1.2))
        else:
            start = prev_start + rng.uniform(0.3, 0.6) * (prev_end - prev_start)
            gain = 10 ** (-rng.uniform(1, 6) / 20)
        if start + n > max_s - 0.5:
            break
        placed.append((start, audio * gain, who, text))
        if rng.random() < 1 / 3 and n > 2.0:
            other = str(rng.choice([v for v in voices if v != who]))
            word = str(rng.choice(BACKCHANNELS))
            bc = line(other, word) * 10 ** (-rng.uniform(0, 4) / 20)
            placed.append((start + rng.uniform(0.35, 0.6) * n, bc, other, word))
        prev_who, prev_start, prev_end = who, start, start + n
    placed.sort(key=lambda p: p[0])
    total = int((max(s + a.shape[0] / sr for s, a, _, _ in placed) + 0.5) * sr)
    mix = mix_lines([(int(round(s * sr)), a, who) for s, a, who, _ in placed], length=total)
    return mix.samples, Reference(mix.turns, tuple(text for *_, text in placed))


def normalizer():
    """Whisper's English text normaliser (numbers, spelling, punctuation)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def score(segments: Sequence[dict], ref: Reference, *, collar: float = 0.0) -> dict[str, float]:
    """DER of the segments' speakers (pyannote.metrics), and with reference texts WER and cpWER.

    Args:
        segments: ``diarized_json`` segments (``start``, ``end``, ``speaker``, ``text``).
        ref: reference turns (and texts), scored region.
    """
    from meeteval.wer.wer.cp import cp_word_error_rate

    from bench.eval_der import der

    hyp = [
        SpeakerTurn(float(s["start"]), float(s["end"]), str(s.get("speaker")))
        for s in segments
        if s.get("speaker") is not None and float(s["end"]) > float(s["start"])
    ]
    out = {f"der_{k}" if k != "der" else "der": v for k, v in der(ref.turns, hyp, uem=ref.uem, collar=collar).items()}
    out["speakers_ref"] = len({t.speaker for t in ref.turns})
    out["speakers_hyp"] = len({s.get("speaker") for s in segments if s.get("speaker") is not None})
    if ref.texts is not None:
        import jiwer

        norm = normalizer()
        ref_words = norm(" ".join(ref.texts))
        hyp_words = norm(" ".join(s["text"] for s in segments))
        out["wer"] = jiwer.wer(ref_words, hyp_words)
        by_ref: dict[str, list[str]] = {}
        for t, text in zip(ref.turns, ref.texts):
            by_ref.setdefault(t.speaker, []).append(norm(text))
        by_hyp: dict[str, list[str]] = {}
        for s in segments:
            by_hyp.setdefault(str(s.get("speaker")), []).append(norm(s["text"]))
        cp = cp_word_error_rate(
            {k: " ".join(v) for k, v in by_ref.items()}, {k: " ".join(v) for k, v in by_hyp.items()}
        )
        out["cpwer"] = cp.error_rate
    return out


def read_reference(wav: Path) -> Reference:
    """``X.rttm`` (required) and ``X.uem`` beside ``X.wav``."""
    from bench.eval_der import read_reference as read_rttm_uem

    try:
        turns, uem = read_rttm_uem(wav)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from exc
    return Reference(tuple(turns), None, uem)


async def transcribe(url: str, name: str, data: bytes, model: str) -> dict:
    """One ``diarized_json`` request with the OpenAI SDK; the body as a dict."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url.rstrip('/')}/v1", api_key="sk-none", max_retries=0, timeout=3600)
    out = await client.audio.transcriptions.create(model=model, file=(name, data), response_format="diarized_json")
    return out.model_dump()


class _Cached:
    """A backend client (or ``None``) whose answers are kept in ``cache`` (a folder) and replayed:
    the key is the audio's bytes and the call's arguments. The router only calls the methods below."""

    def __init__(self, name: str, client, cache: Path | None, concurrency: int = 2) -> None:
        self.name, self.client, self.cache, self.concurrency = name, client, cache, concurrency
        self.answers: list = []  # this run's answers, in call order

    async def _call(self, method: str, wav: bytes = b"", **kwargs):
        import hashlib
        import pickle

        key = hashlib.sha1(wav + repr(sorted(kwargs.items())).encode()).hexdigest()[:24]
        path = self.cache / f"{self.name}-{method}-{key}.pkl" if self.cache else None
        if path is not None and path.is_file():
            out = pickle.loads(path.read_bytes())
        else:
            if self.client is None:
                raise click.ClickException(f"no cached {self.name} answer {path}; give --{self.name}-url")
            out = await getattr(self.client, method)(wav, **kwargs) if wav else await getattr(self.client, method)()
            if path is not None:
                path.write_bytes(pickle.dumps(out))
        self.answers.append(out)
        return out


class CachedWhisper(_Cached):
    async def transcribe(self, wav: bytes, **kwargs):
        return await self._call("transcribe", wav, **kwargs)


class CachedSidecar(_Cached):
    async def diarize(self, wav: bytes, **kwargs):
        return await self._call("diarize", wav, **kwargs)

    async def embed(self, wav: bytes):
        return await self._call("embed", wav)

    async def max_window_s(self, *, timeout_s: float = 5.0):
        return await self._call("max_window_s")


async def transcribe_in_process(
    samples,
    whisper: CachedWhisper,
    sidecar: CachedSidecar,
    *,
    window_s: float | None = None,
    link_threshold: float | None = None,
) -> tuple[dict, list]:
    """The router's pipeline in this process, as a ``diarized_json`` request with the diarize model
    runs it (``Job(diarize=True, turn_spans=True)``; silero-vad cuts audio over 31 s): the body,
    and the sidecar's turns (seconds from the file's start) when the file was diarized in one window,
    else ``[]``. ``window_s`` and ``link_threshold`` are the ``Router``'s (None: its defaults).
    """
    from server.core.formats import render_diarized_json
    from server.core.vad import SileroVad
    from server.router.pipeline import Job, Router, shift_diarization

    router = Router(
        whisper,  # type: ignore[arg-type]
        sidecar,  # type: ignore[arg-type]
        vad=SileroVad(),
        window_s=window_s,
        link_threshold=link_threshold,
    )
    job = Job(model="whisper-1", diarize=True, timestamps=True, turn_spans=True)
    window = await router.diarization_window_s()
    plan = router.plan(samples, job.vad, window)
    first = len(sidecar.answers)
    t = await router.transcribe(samples, plan, job)
    body, _ = render_diarized_json(t)
    diarized = [a for a in sidecar.answers[first:] if hasattr(a, "turns")]
    if len(plan.windows) != 1 or len(diarized) != 1:
        return body, []
    # the sidecar heard the window from its start: its turns in file time, as the router moves them
    return body, list(shift_diarization(diarized[0], plan.windows[0].offset).turns)


def _line(name: str, what: str, c: float, sc: dict) -> str:
    extra = "".join(f"  {k} {sc[k]:.1%}" for k in ("wer", "cpwer") if k in sc)
    return (
        f"{name:28s} {what:7s} collar {c:g}: DER {sc['der']:6.1%} (miss {sc['der_missed']:.1%}, "
        f"FA {sc['der_false_alarm']:.1%}, conf {sc['der_confusion']:.1%}){extra}  "
        f"speakers {sc['speakers_hyp']}/{sc['speakers_ref']}"
    )


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="A running router.")
@click.option("--model", default="gpt-4o-transcribe-diarize", show_default=True)
@click.option("--espeak-long", is_flag=True, help="Also score the 5-minute two-voice espeak-ng conversation.")
@click.option(
    "--overlap-meetings", type=int, default=0, help="Also score this many synthetic meetings with overlapped speech."
)
@click.option("--whisper-url", default=None, help="Run the router's pipeline here against this whisper server.")
@click.option("--sidecar-url", default=None, help="... and this sidecar (also scores the sidecar's own turns).")
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep/replay backend answers here (in-process runs); alone: replay only.",
)
@click.option(
    "--collar",
    "collars",
    type=float,
    multiple=True,
    default=(0.0,),
    show_default=True,
    help="Forgiveness collar (seconds) around reference boundaries; repeat to score one answer at several.",
)
@click.option(
    "--window-s",
    type=float,
    default=None,
    help="In-process runs: the longest diarization window (s), below the sidecar's own, so files are "
    "diarized in several windows whose speakers the router links.",
)
@click.option(
    "--link-threshold",
    "link_thresholds",
    type=float,
    multiple=True,
    help="In-process runs: the router's speaker-linking cosine threshold; repeat to sweep "
    "(with --cache the backends answer once). Default: the router's for the sidecar's embedder.",
)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(
    files,
    url,
    model,
    espeak_long,
    overlap_meetings,
    whisper_url,
    sidecar_url,
    cache,
    collars,
    window_s,
    link_thresholds,
    json_out,
) -> None:
    """Print DER (and WER / cpWER where a script exists) of the router on each recording, at each
    ``--collar`` (one request per recording; the row's ``der*`` keys are the first collar's,
    ``by_collar`` holds every collar's). In-process runs (``--whisper-url``/``--sidecar-url`` or
    ``--cache``) also print the sidecar's own turns' scores (row key ``sidecar``)."""
    from server.core.audio import decode_audio, to_wav_bytes

    cases: list[tuple[str, bytes, Reference]] = [(p.name, p.read_bytes(), read_reference(p)) for p in files]
    if espeak_long:
        samples, ref = long_conversation()
        cases.append(("espeak_long_two_voices", to_wav_bytes(samples), ref))
    for seed in range(overlap_meetings):
        samples, ref = overlapped_meeting(seed)
        cases.append((f"espeak_overlap_meeting_{seed}", to_wav_bytes(samples), ref))
    if not cases:
        raise click.UsageError("give .wav files with .rttm references, --espeak-long or --overlap-meetings")
    in_process = bool(whisper_url or sidecar_url or cache)
    if (window_s is not None or link_thresholds) and not in_process:
        raise click.UsageError(
            "--window-s and --link-threshold need an in-process run (--whisper-url/--sidecar-url/--cache)"
        )
    if in_process:
        from server.router.clients import SidecarClient, WhisperClient

        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        whisper, sidecar = CachedWhisper("whisper", None, cache), CachedSidecar("sidecar", None, cache)
    rows = []
    runs = [(name, data, ref, None) for name, data, ref in cases]
    if link_thresholds:
        runs = [(f"{name} link {lt:g}", data, ref, lt) for name, data, ref in cases for lt in link_thresholds]
    for name, data, ref, link in runs:
        t0 = time.perf_counter()
        sidecar_turns: list[SpeakerTurn] = []
        if in_process:  # fresh clients per run: an httpx pool belongs to one event loop
            whisper.client = whisper_url and WhisperClient(whisper_url, concurrency=2, timeout_s=600.0)
            sidecar.client = sidecar_url and SidecarClient(sidecar_url, concurrency=1, timeout_s=600.0)
            body, sidecar_turns = asyncio.run(
                transcribe_in_process(decode_audio(data), whisper, sidecar, window_s=window_s, link_threshold=link)
            )
        else:
            body = asyncio.run(transcribe(url, name, data, model))
        wall = time.perf_counter() - t0
        scores = {c: score(body["segments"], ref, collar=c) for c in collars}
        row = {
            "file": name,
            "link_threshold": link,
            "duration": body["duration"],
            "wall_s": round(wall, 2),
            **scores[collars[0]],
            "by_collar": {str(c): v for c, v in scores.items()},
            "warnings": body.get("warnings", []),
            "segments": body["segments"],
        }
        if sidecar_turns:
            turns = [{"start": t.start, "end": t.end, "speaker": t.speaker, "text": ""} for t in sidecar_turns]
            side = {c: score(turns, replace(ref, texts=None), collar=c) for c in collars}
            row["sidecar"] = {str(c): v for c, v in side.items()}
            row["sidecar_turns"] = turns
        rows.append(row)
        for c, sc in scores.items():
            if sidecar_turns:
                click.echo(_line(name, "sidecar", c, row["sidecar"][str(c)]))
            click.echo(_line(name, "router", c, sc) + f"  {row['duration']:.0f}s audio in {wall:.1f}s")
    for link in dict.fromkeys(r["link_threshold"] for r in rows):
        group = [r for r in rows if r["link_threshold"] == link]
        if len(group) < 2:
            continue
        tag = "" if link is None else f" at link threshold {link:g}"
        for c in collars:
            mean = sum(r["by_collar"][str(c)]["der"] for r in group) / len(group)
            side = [r["sidecar"][str(c)]["der"] for r in group if "sidecar" in r]
            extra = f", sidecar {sum(side) / len(side):.1%} ({len(side)} files)" if side else ""
            click.echo(f"mean DER over {len(group)} files{tag}, collar {c:g}: router {mean:.1%}{extra}")
    if json_out:
        json_out.write_text(
            json.dumps(
                {"kind": "router-der", "url": url, "collars": list(collars), "window_s": window_s, "files": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
