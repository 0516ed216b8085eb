"""Merging transcript segments with speaker turns.

Each segment takes the speaker it overlaps most (an interval tree over the turns, not an O(n·m)
loop). With word timestamps (the router asks the whisper server for them whenever it diarizes)
each word goes to one speaker and a segment is cut where the speaker changes; its pieces span
exactly their words, and a speaker who talks on through someone else's words (overlapping turns)
keeps one piece, so overlapping speech gives overlapping segments. Segments without usable words
are split proportionally to their characters over each speaker's speech time, the cut snapped to a
nearby sentence end, and their edges pulled in to the speech inside them. For ``diarized_json``
(speaker turns, not subtitles) ``split_at_pauses`` cuts a piece between its words where its
speaker's turns pause, and ``cover_turns`` then widens every piece to its speaker's turn around
its words, so the pauses inside a turn and its edges belong to the speaker (and keeps its edges
within ``TURN_REACH_S`` of that speaker's turns where Whisper timed a word outside them), and
``untranscribed_turns`` reports each turn that got none of its speaker's words (a second voice
Whisper did not write, a dropped backchannel) as a segment of that speaker with empty text.
``fit_times`` keeps every segment ordered and inside the audio.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from server.core.transcript import Segment, SpeakerTurn, Word

MIN_SPLIT_S = 0.6  # a second speaker must talk this long inside a segment to split it
WORD_RE = re.compile(r"\s*\S+")
_SPACE = re.compile(r"\s+")
COVER_FRACTION = 0.9  # two turns covering this much of a word each: overlapping speech
GAP_S = 0.25  # a speaker's turns this close together are one stretch of talk
NEAR_S = 30.0  # how far a piece looks for its speaker's nearest turn (for a confidence)
# a turn without words shorter than this is no segment: about the shortest word said alone ("yeah",
# "no" last 0.2-0.4 s); shorter turns are slivers of the diarizer's frame decisions. Set by that
# reasoning, not fitted (on the tuning set it only drops two slivers of 0.05 and 0.08 s on dev01)
MIN_UNTRANSCRIBED_S = 0.2
# how far a segment that overlaps no turn looks for the nearest turn's speaker: subtitles and
# verbose_json leave a segment without a speaker beyond NEAREST_S; a diarized_json segment always
# has one (OpenAI's TranscriptionDiarizedSegment.speaker is a string), however far its nearest turn
NEAREST_S = 2.0
DIARIZED_NEAREST_S = math.inf
# how far a diarized_json segment may reach outside its speaker's turns, though a word Whisper timed
# there lies further out (the segment keeps the word). Chosen on dev00, dev01 and eight synthetic
# overlapped meetings (bench/results/cpu-router-der-rescored-2026-12-01): the smallest of 0-1 s that
# made no tuning file's DER worse than no bound at all (0.1 and 0 cut speech off the AMI dev clips)
TURN_REACH_S = 0.2


def _timeline(turns: Sequence[SpeakerTurn], start: float, end: float) -> list[SpeakerTurn]:
    """Turns clipped to ``[start, end]`` as a non-overlapping timeline (overlaps go to the more
    confident turn), neighbours of one speaker joined."""
    clipped = [replace(t, start=max(t.start, start), end=min(t.end, end)) for t in turns]
    clipped = [t for t in clipped if t.end > t.start]
    cuts = sorted({x for t in clipped for x in (t.start, t.end)})
    out: list[SpeakerTurn] = []
    for a, b in zip(cuts, cuts[1:]):
        cover = [t for t in clipped if t.start <= a and t.end >= b]
        if not cover:
            continue
        best = max(cover, key=lambda t: (t.confidence or 0.0, t.end - t.start))
        if out and out[-1].speaker == best.speaker and abs(out[-1].end - a) < 1e-9:
            out[-1] = replace(out[-1], end=b)
        else:
            out.append(SpeakerTurn(a, b, best.speaker, best.confidence))
    return out


def _confidence(turns: Sequence[SpeakerTurn], speaker: str, start: float, end: float) -> float | None:
    """Overlap-weighted mean turn confidence of ``speaker`` × its share of the speech in ``[start, end]``."""
    total = mine = weighted = 0.0
    for t in turns:
        ov = min(t.end, end) - max(t.start, start)
        if ov <= 0:
            continue
        total += ov
        if t.speaker == speaker:
            mine += ov
            weighted += ov * (1.0 if t.confidence is None else t.confidence)
    if mine <= 0:
        return None
    return round((weighted / mine) * (mine / total), 3)


def _snap(words: list[str], cut: int, reach: int = 3) -> int:
    """Move a word-index cut to just after the nearest sentence end (then comma) within ``reach`` words."""
    for marks, r in ((".?!", reach), (",;:", 2)):
        best = None
        for k in range(max(1, cut - r), min(len(words) - 1, cut + r) + 1):
            if words[k - 1].rstrip()[-1:] in marks and (best is None or abs(k - cut) < abs(best - cut)):
                best = k
        if best is not None:
            return best
    return cut


def split_segment(seg: Segment, timeline: list[SpeakerTurn]) -> list[Segment]:
    """Split ``seg`` where the speaker changes, assigning characters to time proportionally.

    The segment's words are laid out over the speech time of ``timeline`` (its non-overlapping
    speaker turns) in proportion to their characters; each word goes to the speaker talking at its
    midpoint, and the cut between speakers is snapped to a nearby sentence end. Returns the pieces
    (ids unchanged; tokens dropped from pieces since they no longer match the text).
    """
    words = WORD_RE.findall(seg.text)
    total = sum(t.end - t.start for t in timeline)
    if not timeline:
        return [seg]
    if len(words) < 2 or total <= 0:
        per: dict[str, float] = {}
        for t in timeline:
            per[t.speaker] = per.get(t.speaker, 0.0) + t.end - t.start
        return [replace(seg, speaker=max(per, key=per.get))]
    weights = np.array([len(w.strip()) + 1.0 for w in words])
    mids = (np.cumsum(weights) - weights / 2) / weights.sum() * total
    bounds = np.cumsum([t.end - t.start for t in timeline])
    owner = [int(min(np.searchsorted(bounds, m, side="right"), len(timeline) - 1)) for m in mids]
    spk = [timeline[o].speaker for o in owner]
    cuts = [k for k in range(1, len(words)) if spk[k] != spk[k - 1]]
    cuts = sorted({_snap(words, k) for k in cuts})
    if not cuts:
        return [replace(seg, speaker=spk[0])]
    pieces: list[Segment] = []
    edges = [0, *cuts, len(words)]
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        if b <= a:
            continue
        speaker = max(set(spk[a:b]), key=spk[a:b].count)
        # piece times: from the turn where its first word is spoken to the turn of its last word
        t0 = seg.start if i == 0 else timeline[owner[a]].start
        t1 = seg.end if b == len(words) else timeline[owner[b - 1]].end
        if pieces and t0 < pieces[-1].end:
            t0 = pieces[-1].end
        pieces.append(
            replace(
                seg,
                start=round(t0, 3),
                end=round(max(t1, t0), 3),
                text="".join(words[a:b]),
                tokens=(),
                speaker=speaker,
                words=(),
            )
        )
    # neighbours that ended up with one speaker (after snapping) become one piece
    out: list[Segment] = []
    for p in pieces:
        if out and out[-1].speaker == p.speaker:
            out[-1] = replace(out[-1], end=p.end, text=out[-1].text + p.text)
        else:
            out.append(p)
    return out


def assign_speakers(
    segments: Sequence[Segment], turns: Sequence[SpeakerTurn], *, nearest_s: float = NEAREST_S
) -> list[Segment]:
    """Give every segment the speaker it overlaps most (interval tree), splitting at speaker changes.

    Args:
        segments: transcript segments, absolute times (seconds), in order.
        turns: global speaker turns (absolute times) with confidences; they may overlap (two
            people talking at once).
        nearest_s: a segment overlapping no turn takes the nearest turn's speaker within this
            many seconds (at half its confidence); otherwise it keeps ``speaker=None`` (only
            where there are no turns at all with ``DIARIZED_NEAREST_S``, infinite).

    Returns:
        segments with ``speaker`` and ``confidence`` set, in order of their start, renumbered from
        0. A segment whose word timestamps spell its whole text is split between words
        (``split_by_words``: each word to one speaker, pieces span their words, a speaker who talks
        on through another's words keeps one piece, so overlapping speech gives overlapping
        pieces); other segments are split proportionally (``split_segment``). Every piece keeps
        its segment's decoding statistics (``seek``, ``avg_logprob``, ``compression_ratio``,
        ``no_speech_prob``, ``temperature``); ``tokens`` only when it is the whole segment.
    """
    tree = _turn_tree(turns)
    out: list[Segment] = []
    for seg in segments:
        if seg.words and words_spell_text(seg):
            out.extend(split_by_words(seg, tree, nearest_s))
            continue
        hits = [iv.data for iv in tree.overlap(seg.start, max(seg.end, seg.start + 1e-3))]
        if not hits:
            out.append(_nearest(seg, tree, nearest_s))
            continue
        per: dict[str, float] = {}
        for t in hits:
            per[t.speaker] = per.get(t.speaker, 0.0) + min(t.end, seg.end) - max(t.start, seg.start)
        ranked = sorted(per.items(), key=lambda kv: -kv[1])
        if len(ranked) > 1 and ranked[1][1] >= MIN_SPLIT_S:
            pieces = split_segment(seg, _timeline(hits, seg.start, seg.end))
        else:
            pieces = [replace(seg, speaker=ranked[0][0])]
        for p in pieces:
            p = _trim_to_speech(p, hits)
            out.append(replace(p, confidence=_piece_confidence(tree, p.speaker, p.start, p.end)))
    out.sort(key=lambda s: s.start)  # stable: pieces of one segment keep their order at equal starts
    return [replace(s, id=i) for i, s in enumerate(out)]


def _turn_tree(turns: Sequence[SpeakerTurn]):
    """``intervaltree.IntervalTree`` of the turns (empty ones left out), each interval's data its turn."""
    from intervaltree import IntervalTree

    tree = IntervalTree()
    for t in turns:
        if t.end > t.start:
            tree.addi(t.start, t.end, t)
    return tree


def _words_piece(seg: Segment, words: Sequence[Word], speaker: str | None, tree, *, whole: bool = False) -> Segment:
    """The part of ``seg`` that holds ``words``, spoken by ``speaker``: spanning exactly its words,
    its text theirs (``seg``'s own text and tokens when it is ``whole``), the words labelled with
    ``speaker``, its confidence over its span (``_piece_confidence``); statistics kept."""
    start, end = min(w.start for w in words), max(w.end for w in words)
    return replace(
        seg,
        start=round(start, 3),
        end=round(max(end, start), 3),
        text=seg.text if whole else "".join(w.word for w in words),
        words=tuple(replace(w, speaker=speaker) for w in words),
        tokens=seg.tokens if whole else (),
        speaker=speaker,
        confidence=_piece_confidence(tree, speaker, start, end),
    )


def words_spell_text(seg: Segment) -> bool:
    """True when the segment's words, joined, are its text (whitespace aside): only then can the
    text be cut between words without losing any (an alignment pass may leave words out)."""
    return _SPACE.sub("", "".join(w.word for w in seg.words)) == _SPACE.sub("", seg.text)


def _trim_to_speech(seg: Segment, turns: Sequence[SpeakerTurn]) -> Segment:
    """Pull the segment's edges in to the first and last speech (any speaker's turn) inside it:
    Whisper's segment times often include the pauses around a sentence (segments without words)."""
    inside = [t for t in turns if t.end > seg.start and t.start < seg.end]
    if not inside:
        return seg
    start = max(seg.start, min(t.start for t in inside))
    end = min(seg.end, max(t.end for t in inside))
    return replace(seg, start=round(start, 3), end=round(end, 3)) if end > start else seg


def _nearest(seg: Segment, tree, within: float) -> Segment:
    near = [iv.data for iv in tree.overlap(seg.start - within, seg.end + within)]
    if not near:
        return seg
    mid = (seg.start + seg.end) / 2
    t = min(near, key=lambda t: min(abs(t.start - mid), abs(t.end - mid)))
    conf = None if t.confidence is None else round(t.confidence / 2, 3)
    return replace(seg, speaker=t.speaker, confidence=conf if conf is not None else 0.5)


def _piece_confidence(tree, speaker: str | None, start: float, end: float) -> float | None:
    """``_confidence`` of ``speaker`` over ``[start, end]`` (widened to 50 ms when shorter); a piece
    its speaker does not overlap (it took a neighbour's speaker) gets half that speaker's nearest
    turn confidence within ``NEAR_S`` (0.25 without one). ``None`` only when there is no speaker."""
    if speaker is None:
        return None
    a, b = start, max(end, start + 0.05)
    hits = [iv.data for iv in tree.overlap(a, b)]
    conf = _confidence(hits, speaker, a, b)
    if conf is not None:
        return conf
    mine = [iv.data for iv in tree.overlap(a - NEAR_S, b + NEAR_S) if iv.data.speaker == speaker]
    if not mine:
        return 0.25
    t = min(mine, key=lambda t: max(t.start - b, a - t.end, 0.0))
    return round((0.5 if t.confidence is None else t.confidence) / 2, 3)


def _word_speaker(w: Word, tree) -> str | None:
    """The speaker whose turn overlaps the word most; where two turns each cover (nearly) all of
    it (overlapping speech), the shorter turn: the one that says someone else speaks *here*."""
    end = max(w.end, w.start + 1e-3)
    hits = [iv.data for iv in tree.overlap(w.start, end)]
    if not hits:
        return None
    span = end - w.start
    ov = {id(t): min(t.end, end) - max(t.start, w.start) for t in hits}
    full = [t for t in hits if ov[id(t)] >= COVER_FRACTION * span]
    if len(full) > 1:
        return min(full, key=lambda t: t.end - t.start).speaker
    return max(hits, key=lambda t: ov[id(t)]).speaker


def _covered(tree, speaker: str, start: float, end: float) -> bool:
    """Whether ``speaker``'s turns cover ``[start, end]`` with no gap over ``GAP_S``."""
    if end <= start:
        return True
    spans = sorted((t.start, t.end) for t in (iv.data for iv in tree.overlap(start, end)) if t.speaker == speaker)
    reach = start
    for a, b in spans:
        if a - reach > GAP_S:
            return False
        reach = max(reach, b)
    return end - reach <= GAP_S


def split_by_words(seg: Segment, tree, nearest_s: float = 2.0) -> list[Segment]:
    """One segment (whose words spell its text) → one piece per speaker run of words.

    Each word goes to one speaker (``_word_speaker``; a word no turn touches takes its previous
    neighbour's speaker, the first ones the next labelled word's, else the nearest turn's within
    ``nearest_s``). Runs of one speaker become pieces spanning exactly their words. When a speaker's
    turns go on through another speaker's run (both talk at once: the sidecar's turns overlap
    there), that speaker's runs before and after are one piece, so the pieces overlap in time as
    the voices do; every word is still in exactly one piece.

    Args:
        seg: a segment with ``words`` (absolute times).
        tree: ``intervaltree.IntervalTree`` of the ``SpeakerTurn`` s.

    Returns:
        pieces in order of their first word, each with ``speaker``, ``confidence`` and its words;
        ``tokens`` kept only when the segment stays whole.
    """
    labels = [_word_speaker(w, tree) for w in seg.words]
    for i in range(1, len(labels)):
        if labels[i] is None:
            labels[i] = labels[i - 1]
    first = next((s for s in labels if s is not None), None)
    if first is None:
        first = _nearest(seg, tree, nearest_s).speaker
    labels = [s if s is not None else first for s in labels]
    runs: list[tuple[str | None, list[Word]]] = []
    for w, spk in zip(seg.words, labels):
        if runs and runs[-1][0] == spk:
            runs[-1][1].append(w)
        else:
            runs.append((spk, [w]))
    groups: list[tuple[str | None, list[Word]]] = []
    for spk, words in runs:
        prev = next((g for g in reversed(groups) if g[0] == spk), None)
        if prev is not None and spk is not None and _covered(tree, spk, prev[1][-1].end, words[0].start):
            prev[1].extend(words)
        else:
            groups.append((spk, list(words)))
    whole = len(groups) == 1
    return [_words_piece(seg, words, spk, tree, whole=whole) for spk, words in groups]


def _stretches(turns: Sequence[SpeakerTurn]) -> dict[str, list[tuple[float, float]]]:
    """Each speaker's turns, sorted and joined where they are at most ``GAP_S`` apart (seconds).

    This is pyannote.core's ``Timeline.support(collar=GAP_S)`` per speaker, kept by hand because it
    runs per request: pyannote.core 6.1.0 was 17-58x slower on 20-5000 turns, and its collar joins
    gaps shorter than ``GAP_S`` only (here: up to it); bench/results/cpu-merge-stretches-2026-12-01.
    """
    out: dict[str, list[tuple[float, float]]] = {}
    for t in sorted(turns, key=lambda t: t.start):
        if t.end <= t.start:
            continue
        spans = out.setdefault(t.speaker, [])
        if spans and t.start - spans[-1][1] <= GAP_S:
            spans[-1] = (spans[-1][0], max(spans[-1][1], t.end))
        else:
            spans.append((t.start, t.end))
    return out


def _word_stretch(w: Word, mine: list[tuple[float, float]], ends: list[float]) -> int | None:
    """Index of the stretch in ``mine`` (sorted, disjoint; ``ends`` their ends) that overlaps the
    word most, or ``None``: a word Whisper timed across a pause belongs to one side of it."""
    end = max(w.end, w.start + 1e-3)
    best, most = None, 0.0
    k = bisect.bisect_right(ends, w.start)  # the first stretch ending after the word starts
    while k < len(mine) and mine[k][0] < end:
        ov = min(mine[k][1], end) - max(mine[k][0], w.start)
        if ov > most:
            best, most = k, ov
        k += 1
    return best


def _pause_pieces(
    seg: Segment, stretches: dict[str, list[tuple[float, float]]], ends: dict[str, list[float]], tree
) -> list[tuple[Segment, list[int]]]:
    """``seg`` cut as :func:`split_at_pauses` cuts it, each piece with the sorted indices of its
    speaker's stretches (``_stretches``; ``ends`` their ends) that its words lie in (``_word_stretch``)."""
    if seg.speaker is None or seg.speaker not in stretches:
        return [(seg, [])]
    mine = stretches[seg.speaker]
    slots = [_word_stretch(w, mine, ends[seg.speaker]) for w in seg.words]
    placed = [k for k in slots if k is not None]
    if len(set(placed)) < 2 or not words_spell_text(seg):
        return [(seg, sorted(set(placed)))]
    last = placed[0]
    runs: list[tuple[int, list[Word]]] = []
    for w, k in zip(seg.words, slots):
        k = last if k is None else k
        if runs and k == last:
            runs[-1][1].append(w)
        else:
            runs.append((k, [w]))
        last = k
    return [(_words_piece(seg, words, seg.speaker, tree), [k]) for k, words in runs]


def split_at_pauses(segments: Sequence[Segment], turns: Sequence[SpeakerTurn]) -> list[Segment]:
    """Cut a speaker's segment between its words where that speaker's turns stop and start again
    (the first step of :func:`cover_turns`).

    A ``diarized_json`` segment is a speaker turn; one Whisper segment whose words all went to
    speaker X can run across a pause where the diarizer heard X stop (a gap of more than ``GAP_S``
    between two stretches of X's turns, see ``_stretches``), and as one segment its time span would
    claim that pause for X. Each word goes to the stretch of X it overlaps most (a word in no
    stretch stays with the word before it, the first ones with the next placed word); a segment
    whose words fall in two or more stretches becomes one piece per stretch, spanning its words,
    with the segment's speaker and statistics, its words' text, and its confidence over its own
    span. Segments without a speaker, without words that spell their text, or within one stretch
    are returned as they are.

    Args:
        segments: speaker-attributed segments (``assign_speakers``), absolute seconds.
        turns: the speaker turns they were attributed from.

    Returns:
        the segments in their input order, each split segment's pieces in place of it (ids kept).
    """
    stretches, tree = _stretches(turns), _turn_tree(turns)
    ends = {k: [b for _, b in v] for k, v in stretches.items()}
    return [piece for seg in segments for piece, _ in _pause_pieces(seg, stretches, ends, tree)]


def cover_turns(
    segments: Sequence[Segment], turns: Sequence[SpeakerTurn], *, start: float = 0.0, end: float = float("inf")
) -> list[Segment]:
    """Widen every speaker-attributed segment to its speaker's turn around its words.

    ``diarized_json`` segments are speaker turns (OpenAI's ``TranscriptionDiarized``), so the
    pauses between a speaker's words and the edges of the turn the diarizer found belong to that
    speaker; a segment spanning only its words leaves them as missed speech. A segment of speaker
    X grows to the stretch of X's turns (joined over gaps ≤ ``GAP_S``) that its words lie in (a word
    Whisper timed across a pause counts for the stretch it overlaps most; a segment without words in
    any stretch: the stretches overlapping it), but never
    over X's own neighbouring segments (X's consecutive segments in one turn meet at the next
    one's first word, so they never overlap each other) and never outside ``[start, end]``. It
    holds its words, except where Whisper timed a word outside X's turns: then its edge stops
    ``TURN_REACH_S`` beyond the stretches it overlaps (the diarizer heard no speech of X there, so
    reaching further is false alarm); the word stays in the segment's text. Another speaker's
    segment bounds it only where the diarizer's turns say so (X's turn ends where Y's begins);
    where the turns overlap (two people at once) the segments overlap too. A segment whose words
    lie in two or more of X's stretches is first cut between them (:func:`split_at_pauses`); text,
    words, speakers and statistics are otherwise unchanged.

    Args:
        segments: speaker-attributed segments (``assign_speakers``), absolute seconds; segments
            without a speaker, or whose speaker has no turn overlapping them, are left as they are.
        turns: the speaker turns the segments were attributed from (same speaker names).
        start, end: bounds in seconds (the audio, or the chunk a stream emits).

    Returns:
        the segments in their input order (a cut segment's pieces in its place), ``start ≤ end`` each.
    """
    stretches = _stretches(turns)
    starts = {k: [a for a, _ in v] for k, v in stretches.items()}
    ends = {k: [b for _, b in v] for k, v in stretches.items()}
    tree = _turn_tree(turns)
    pieces = [piece for seg in segments for piece in _pause_pieces(seg, stretches, ends, tree)]
    segments = [seg for seg, _ in pieces]
    span: dict[int, tuple[float, float]] = {}
    for i, (s, words_in) in enumerate(pieces):
        mine = stretches.get(s.speaker) if s.speaker is not None else None
        if not mine:
            continue
        hi = max(s.end, s.start + 1e-3)
        # the stretches its words belong to (a word across a pause: the side it overlaps most),
        # else (no words, or none in a stretch) those overlapping [start, hi): a contiguous run
        if words_in:
            hits = mine[words_in[0] : words_in[-1] + 1]
        else:
            lo_i = bisect.bisect_right(ends[s.speaker], s.start)
            hi_i = bisect.bisect_left(starts[s.speaker], hi)
            hits = mine[lo_i:hi_i]
        if hits:
            a, b = max(start, min(a for a, _ in hits)), min(end, max(b for _, b in hits))
            # the segment's own edges (its words), pulled in to within TURN_REACH_S of the stretches
            own = (max(s.start, a - TURN_REACH_S), min(s.end, b + TURN_REACH_S))
            span[i] = (min(own[0], a), max(own[1], b), *own)
    by_speaker: dict[str, list[int]] = {}
    for i in sorted(span, key=lambda i: (segments[i].start, segments[i].end)):
        by_speaker.setdefault(segments[i].speaker, []).append(i)
    out = list(segments)
    for order in by_speaker.values():
        prev_end = -float("inf")
        for k, i in enumerate(order):
            s = segments[i]
            lo, hi, own_lo, own_hi = span[i]
            lo = min(own_lo, max(lo, prev_end))
            if k + 1 < len(order):
                hi = max(own_hi, min(hi, segments[order[k + 1]].start))
            out[i] = replace(s, start=round(lo, 3), end=round(max(hi, lo), 3))
            prev_end = max(prev_end, out[i].end)
    return out


def untranscribed_turns(
    segments: Sequence[Segment], turns: Sequence[SpeakerTurn], *, start: float = 0.0, end: float = float("inf")
) -> list[Segment]:
    """Segments with empty text for the speaker turns that hold none of their speaker's words.

    Whisper writes one voice where two talk at once, and often drops backchannels and mumbled
    speech, so some of the diarizer's turns get no word of the transcript: no transcript segment
    carries their speaker there. ``diarized_json`` segments are speaker turns (OpenAI's
    ``TranscriptionDiarized``), so each such turn is reported as a segment of its speaker with
    ``text=""`` (someone spoke; no words were transcribed), rather than left out as if nobody had
    spoken. The transcript's text is unchanged; each word is still in exactly one segment.

    A stretch of a speaker's turns (joined over gaps ≤ ``GAP_S``, as ``cover_turns`` joins them)
    that overlaps no segment of that speaker becomes one segment spanning the stretch (clipped to
    ``[start, end]``) when it lasts at least ``MIN_UNTRANSCRIBED_S``; its confidence is the overlap-weighted mean of its turns' confidences times
    its speaker's share of the diarized speech there (``_confidence``), so a turn spoken under
    another voice gets a lower one. ``seek`` is the 10 ms frame of its start; the decoding
    statistics stay at their defaults (nothing was decoded).

    Args:
        segments: speaker-attributed segments (after ``cover_turns``), absolute seconds.
        turns: the speaker turns they were attributed from (same speaker names).
        start, end: bounds in seconds (the audio, or the chunk a stream emits).

    Returns:
        only the new segments (``id`` 0, ``words=()``), in order of their start.
    """
    mine: dict[str, list[tuple[float, float]]] = {}
    for s in segments:
        if s.speaker is not None:
            mine.setdefault(s.speaker, []).append((s.start, max(s.end, s.start + 1e-3)))
    out = []
    for speaker, stretches in _stretches(turns).items():
        spans = sorted(mine.get(speaker, []))
        starts = [x for x, _ in spans]
        reach = list(itertools.accumulate((e for _, e in spans), max))  # latest end of spans[: i + 1]
        for a, b in stretches:
            a, b = max(a, start), min(b, end)
            if b - a < MIN_UNTRANSCRIBED_S:
                continue
            # spans[:i] start before b; one ending after a overlaps (a bisect: pyannote.core 6.1.0's
            # Timeline.crop(mode="loose") walks every span from the first for each stretch)
            i = bisect.bisect_left(starts, b)
            if i and reach[i - 1] > a:
                continue
            out.append(
                Segment(
                    id=0,
                    start=round(a, 3),
                    end=round(b, 3),
                    text="",
                    seek=int(round(a * 100)),
                    speaker=speaker,
                    confidence=_confidence(turns, speaker, a, b),
                )
            )
    return sorted(out, key=lambda s: (s.start, s.end))


def fit_times(segments: Sequence[Segment], duration: float, *, spans_words: bool = True) -> list[Segment]:
    """Every segment's (and word's) times inside ``[0, duration]`` and ordered (start ≤ end); a
    segment whose words spell its text spans exactly its words, as openai/whisper sets a segment's
    times from its word timestamps (``add_word_timestamps``); one with only some words (the
    alignment left some out) keeps its own times, widened to hold them.

    Args:
        segments: absolute times in seconds.
        duration: the audio's length in seconds.
        spans_words: False (``diarized_json``, whose segments ``cover_turns`` fitted to their
            speaker's turns): every segment keeps its own times (clamped to the audio).
    """

    def clamp(x: float) -> float:
        return round(min(max(x, 0.0), duration), 3)

    out = []
    for s in segments:
        words = tuple(replace(w, start=clamp(w.start), end=max(clamp(w.end), clamp(w.start))) for w in s.words)
        start, end = clamp(s.start), clamp(s.end)
        if words and words_spell_text(s) and spans_words:
            start, end = min(w.start for w in words), max(w.end for w in words)
        elif words and spans_words:
            start, end = min(start, *(w.start for w in words)), max(end, *(w.end for w in words))
        out.append(replace(s, start=start, end=max(start, end), words=words))
    return out
