"""Named prompt templates for Phi-4-multimodal audio tasks, token budgets, and the diarize parser.

Instruction wording for ``transcribe``, ``translate`` and ``summarize`` follows the model card
(https://huggingface.co/microsoft/Phi-4-multimodal-instruct, "Speech" input examples). The
``diarize`` task has several templates, as the Phi-4 diarization notebook compared prompts: the
model was not trained for diarization, so which wording works is an empirical question that
``chorus prompts run --templates all`` answers on your audio.

The chat format is Phi's: ``<|system|>…<|end|><|user|><|audio|>instruction<|end|><|assistant|>``;
transformers' native processor expands ``<|audio|>`` (not the remote-code ``<|audio_1|>``) to one
placeholder per audio embedding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

AUDIO_PLACEHOLDER = "<|audio|>"

# Budget for generated tokens (see ``max_new_tokens``).
WORDS_PER_SECOND = 3.0  # fast conversational speech is ~180 words/min; typical is ~150
TOKENS_PER_WORD = 1.4  # o200k BPE on English prose; more for other languages and numbers
SAFETY = 1.5
BASE_TOKENS = 32


@dataclass(frozen=True)
class Task:
    """One audio task: its templates (name → instruction), defaults and token budget.

    ``per_second``: expected output tokens per second of audio relative to a plain transcript
    (2.0 for diarize: labels and timestamps); ``fixed``: a budget independent of duration
    (summaries, captions, answers); ``temperature``: default sampling temperature.
    """

    name: str
    templates: dict[str, str]
    default_template: str
    temperature: float = 0.0
    per_second: float = 1.0
    fixed: int | None = None
    needs: tuple[str, ...] = ()  # template fields a request must give (e.g. "question")

    def render(self, template: str | None = None, **fields: str) -> str:
        """The instruction text of ``template`` (default: ``default_template``) with ``fields``.

        Raises:
            KeyError: unknown template name.
            ValueError: a field the template needs is missing.
        """
        name = template or self.default_template
        if name not in self.templates:
            raise KeyError(f"task {self.name!r} has no template {name!r}; choose one of {sorted(self.templates)}")
        missing = [f for f in self.needs if not fields.get(f)]
        if missing:
            raise ValueError(f"task {self.name!r} needs {', '.join(missing)}")
        return self.templates[name].format(**{k: v for k, v in fields.items() if v is not None})


DIARIZE_TEMPLATES = {
    "timestamps": (
        "Transcribe the audio with speaker diarization. Write one line per speaker turn in the form "
        "[start - end] Speaker N: text, where start and end are times in seconds from the beginning "
        "of the audio and speakers are numbered in order of appearance."
    ),
    "speaker_turns": (
        "Transcribe the conversation in the audio. Start a new line whenever the speaker changes and "
        "prefix each line with the speaker's label: Speaker 1:, Speaker 2:, and so on."
    ),
    "json": (
        "Listen to the audio and identify who speaks when. Answer only with a JSON array of objects with "
        'the keys "start" (seconds), "end" (seconds), "speaker" ("Speaker 1", "Speaker 2", ...) and '
        '"text" (the words spoken), in time order.'
    ),
    "count_then_transcribe": (
        "First say how many different people speak in the audio on a line of its own, like "
        "'Speakers: 2'. Then transcribe it, one line per speaker turn, as [start - end] Speaker N: text "
        "with times in seconds."
    ),
}

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "transcribe",
            {
                "default": "Transcribe the audio clip into text.",
                "comprehensive": "Based on the attached audio, generate a comprehensive text transcription of the "
                "spoken content.",
            },
            "default",
        ),
        Task("diarize", DIARIZE_TEMPLATES, "timestamps", per_second=2.0),
        Task(
            "translate",
            {
                "default": "Translate the audio to {language}.",
                "with_transcript": "Transcribe the audio to text, and then translate the audio to {language}. "
                "Use <sep> as a separator between the original transcript and the translation.",
            },
            "default",
            per_second=1.3,
            needs=("language",),
        ),
        Task(
            "summarize",
            {
                "default": "Summarize the audio.",
                "bullets": "Summarize the main points of the audio as a short bulleted list.",
            },
            "default",
            temperature=0.3,
            fixed=512,
        ),
        Task(
            "describe",
            {
                "default": "Describe the audio: who is speaking, the setting, background sounds, tone and mood.",
                "caption": "Write a one-sentence caption for this audio.",
            },
            "default",
            temperature=0.3,
            fixed=256,
        ),
        Task(
            "continue",
            {
                "default": "This is a recorded conversation. Predict the next turn: write what the next speaker "
                "is most likely to say, and nothing else.",
            },
            "default",
            temperature=0.7,
            fixed=256,
        ),
        Task("qa", {"default": "{question}"}, "default", temperature=0.2, fixed=512, needs=("question",)),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        KeyError: unknown task (message lists the known ones).
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def max_new_tokens(task: Task, duration_s: float, *, cap: int, context_left: int | None = None) -> int:
    """Generation budget for ``duration_s`` seconds of audio.

    ``BASE + duration · WORDS_PER_SECOND · TOKENS_PER_WORD · SAFETY · task.per_second`` (about
    6.3 tokens per second of audio for a transcript), or the task's fixed budget; at most ``cap``
    and the context left after the prompt, and at least 1.
    """
    if task.fixed is not None:
        budget = task.fixed
    else:
        budget = BASE_TOKENS + duration_s * WORDS_PER_SECOND * TOKENS_PER_WORD * SAFETY * task.per_second
    budget = min(int(budget), cap)
    if context_left is not None:
        budget = min(budget, context_left)
    return max(1, budget)


def user_prompt(instruction: str, n_audio: int = 1, system: str | None = None) -> str:
    """A single-turn Phi chat prompt: audio placeholders, then the instruction, then the assistant tag."""
    head = f"<|system|>{system}<|end|>" if system else ""
    return f"{head}<|user|>{AUDIO_PLACEHOLDER * n_audio}{instruction}<|end|><|assistant|>"


# ---------------------------------------------------------------------------------------------
# Parsing the diarize task's output

_NUM = r"(\d+(?:\.\d+)?|\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?)"
_LINE_WITH_TIMES = re.compile(
    rf"^\s*[\[(]?\s*{_NUM}\s*s?\s*(?:-|–|to|,)\s*{_NUM}\s*s?\s*[\])]?\s*[-:]?\s*"
    r"(?P<speaker>(?:speaker|spk)(?:[\s_-]+\w+|\d+)|[A-Z][\w .'-]{0,30}?)\s*:\s*(?P<text>.*)$",
    re.IGNORECASE,
)
_LINE_NO_TIMES = re.compile(r"^\s*(?P<speaker>(?:speaker|spk)(?:[\s_-]+\w+|\d+))\s*:\s*(?P<text>.*)$", re.IGNORECASE)


def _seconds(value: str) -> float:
    """``"12.5"`` or ``"01:02.5"`` or ``"1:02:03"`` → seconds."""
    parts = [float(p) for p in value.split(":")]
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total


def _speaker_label(raw: str) -> str:
    """``"Speaker 1"``, ``"speaker_1"``, ``"SPK1"`` → ``"Speaker 1"``; other names stay as written."""
    m = re.fullmatch(r"(?:speaker|spk)(?:[\s_-]+(\w+)|(\d+))", raw.strip(), re.IGNORECASE)
    return f"Speaker {m.group(1) or m.group(2)}" if m else raw.strip()


def parse_diarized_text(text: str) -> list[dict] | None:
    """Phi-4's diarize output → ``[{start, end, speaker, text}]``, or None when it follows no format.

    Accepts a JSON array of objects (``start``/``end``/``speaker``/``text``), lines like
    ``[1.2 - 3.4] Speaker 1: words`` (also ``mm:ss`` times), or ``Speaker 1: words`` lines without
    times (``start``/``end`` None). Lines that match none of these (e.g. ``Speakers: 2``) are
    skipped; None is returned when no line matched. Times are seconds, ``end >= start``.
    """
    stripped = text.strip()
    block = re.search(r"\[\s*\{.*\}\s*\]", stripped, re.DOTALL)
    if block:
        try:
            items = json.loads(block.group(0))
            segments = []
            for item in items:
                if not isinstance(item, dict) or "speaker" not in item:
                    raise ValueError
                start = float(item["start"]) if item.get("start") is not None else None
                end = float(item["end"]) if item.get("end") is not None else None
                if start is not None and end is not None and end < start:
                    start, end = end, start
                segments.append(
                    {
                        "start": start,
                        "end": end,
                        "speaker": _speaker_label(str(item["speaker"])),
                        "text": str(item.get("text", "")).strip(),
                    }
                )
            if segments:
                return segments
        except (ValueError, TypeError):
            pass
    segments = []
    for line in stripped.splitlines():
        m = _LINE_WITH_TIMES.match(line)
        if m:
            start, end = _seconds(m.group(1)), _seconds(m.group(2))
            if end < start:
                start, end = end, start
            segments.append(
                {
                    "start": start,
                    "end": end,
                    "speaker": _speaker_label(m.group("speaker")),
                    "text": m.group("text").strip(),
                }
            )
            continue
        m = _LINE_NO_TIMES.match(line)
        if m:
            segments.append(
                {
                    "start": None,
                    "end": None,
                    "speaker": _speaker_label(m.group("speaker")),
                    "text": m.group("text").strip(),
                }
            )
    return segments or None
