"""Word-level timestamps from cross-attention, as in openai/whisper ``timing.py``.

The decoder is run once more, teacher-forced on ``<|sot|> <|lang|> <|task|> <|notimestamps|>``
+ the window's text tokens + ``<|endoftext|>``; the cross-attention weights of the model's
*alignment heads* (listed in the generation config) are normalised per head, median-filtered
along time, averaged, and aligned to the encoder frames by dynamic time warping (DTW). Each
word's start and end are the frames where the DTW path enters its first and next word's tokens.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from server.core.audio import HOP_LENGTH, TOKENS_PER_SECOND

MEDFILT_WIDTH = 7  # frames, openai/whisper's default
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SPLIT_ON_UNICODE = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


@dataclass(frozen=True)
class TimedWord:
    """One word: its text (leading space kept), token ids, times in seconds from the window's start."""

    word: str
    tokens: tuple[int, ...]
    start: float
    end: float
    first_token: int  # index of its first token in the window's text tokens


def split_words(tokens: list[int], decode, language: str) -> list[tuple[str, list[int]]]:
    """Group text tokens into words: at a leading space or punctuation, or per unicode
    character for languages written without spaces (openai/whisper ``split_to_word_tokens``)."""
    pieces: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for tok in tokens:  # decode progressively so multi-token unicode characters stay whole
        current.append(tok)
        text = decode(current)
        if "\ufffd" not in text:
            pieces.append((text, current))
            current = []
    if current:
        pieces.append((decode(current), current))
    if language in SPLIT_ON_UNICODE:
        return [(t, list(ts)) for t, ts in pieces]
    words: list[tuple[str, list[int]]] = []
    for text, toks in pieces:
        starts_word = text.startswith(" ") or text.strip() in string.punctuation or not words
        if starts_word:
            words.append((text, list(toks)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + list(toks))
    return words


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic alignment of rows (tokens) to columns (frames) minimising ``cost``.

    Args:
        cost: float ``(n_tokens, n_frames)``.

    Returns:
        ``(token_indices, frame_indices)``, int arrays of the path from (0, 0) to the end.
    """
    import librosa

    _, wp = librosa.sequence.dtw(C=cost.astype(np.float64), step_sizes_sigma=np.array([[1, 1], [0, 1], [1, 0]]))
    wp = wp[::-1]
    return wp[:, 0], wp[:, 1]


def word_timings(
    weights: np.ndarray,
    text_tokens: list[int],
    n_samples: int,
    n_prefix: int,
    decode,
    language: str,
) -> list[TimedWord]:
    """Word times of one window from its alignment-head cross-attention.

    Args:
        weights: float32 ``(n_heads, L, 1500)`` cross-attention of the alignment heads over the
            teacher-forced sequence (``n_prefix`` prefix tokens incl. ``<|notimestamps|>``, the
            text tokens, ``<|endoftext|>``, then padding).
        text_tokens: the window's text token ids (no timestamps, no specials).
        n_samples: the window's length in 16 kHz samples (attention past it is ignored).
        n_prefix: prefix length (4 for a multilingual model).
        decode: token ids → text.
        language: ISO code (decides how tokens group into words).

    Returns:
        Words in order with start/end in seconds from the window's start; ``[]`` without text.
    """
    from scipy.ndimage import median_filter

    if not text_tokens:
        return []
    n_frames = max(1, n_samples // HOP_LENGTH // 2)
    n = len(text_tokens)
    w = weights[:, : n_prefix + n + 1, :n_frames].astype(np.float64)
    w = w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-12)  # softmax restricted to the audio
    mean = w.mean(axis=-2, keepdims=True)
    std = w.std(axis=-2, keepdims=True)
    w = (w - mean) / np.maximum(std, 1e-12)
    w = median_filter(w, size=(1, 1, MEDFILT_WIDTH), mode="reflect")
    matrix = w.mean(axis=0)[n_prefix - 1 : -1]  # rows predicting each text token, then EOT
    token_idx, frame_idx = dtw_path(-matrix)
    jumps = np.pad(np.diff(token_idx), (1, 0), constant_values=1).astype(bool)
    jump_times = frame_idx[jumps] / TOKENS_PER_SECOND
    words = split_words(text_tokens, decode, language)
    bounds = np.pad(np.cumsum([len(toks) for _, toks in words]), (1, 0))
    out: list[TimedWord] = []
    for k, (text, toks) in enumerate(words):
        start = float(jump_times[min(bounds[k], len(jump_times) - 1)])
        end = float(jump_times[min(bounds[k + 1], len(jump_times) - 1)])
        out.append(TimedWord(text, tuple(toks), start, max(start, end), int(bounds[k])))
    return merge_punctuation(out)


def merge_punctuation(words: list[TimedWord]) -> list[TimedWord]:
    """Attach lone punctuation to the next word (opening marks) or the previous one (closing)."""
    out: list[TimedWord] = []
    pending: TimedWord | None = None
    for w in words:
        bare = w.word.strip()
        if bare and all(c in APPEND_PUNCTUATIONS for c in bare) and out:
            prev = out[-1]
            out[-1] = TimedWord(
                prev.word + w.word.strip(), prev.tokens + w.tokens, prev.start, prev.end, prev.first_token
            )
            continue
        if bare and all(c in PREPEND_PUNCTUATIONS for c in bare):
            pending = w if pending is None else pending
            continue
        if pending is not None:
            w = TimedWord(
                pending.word + w.word.lstrip(), pending.tokens + w.tokens, w.start, w.end, pending.first_token
            )
            pending = None
        out.append(w)
    if pending is not None:
        out.append(pending)
    return out


def fit_to_segment(
    words: list[TimedWord], seg_start: float, seg_end: float, median: float, last_speech: float
) -> list[TimedWord]:
    """openai/whisper's ``add_word_timestamps`` clean-up for one segment's words (seconds).

    DTW lets the first word after a pause swallow the silence before it (and the last word the
    silence after it); such words are cut to twice the median word duration, and the segment's
    own timestamps are preferred where a word overruns them by more than 0.5 s.
    """
    if not words:
        return words
    words = list(words)
    max_duration = 2 * median

    def with_times(w: TimedWord, start: float, end: float) -> TimedWord:
        return TimedWord(w.word, w.tokens, start, end, w.first_token)

    first = words[0]
    if first.end - last_speech > 4 * median and first.end - first.start > max_duration:
        words[0] = first = with_times(first, max(0.0, first.end - max_duration), first.end)
    if seg_start < first.end and seg_start - 0.5 > first.start:
        words[0] = with_times(first, max(0.0, min(first.end - median, seg_start)), first.end)
    last = words[-1]
    if seg_end > last.start and seg_end + 0.5 < last.end:
        words[-1] = with_times(last, last.start, max(last.start + median, seg_end))
    return words


def median_word_duration(words: list[TimedWord]) -> float:
    """Median word duration (s), at most 0.7 s (openai/whisper); 0.7 without words."""
    durations = [w.end - w.start for w in words if w.end > w.start]
    return min(0.7, float(np.median(durations))) if durations else 0.7
