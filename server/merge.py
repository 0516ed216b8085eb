"""Merging transcript segments with speaker turns.

Each segment takes the speaker it overlaps most (an interval tree over the turns, not an O(n·m)
loop). A segment in which a second speaker talks long enough is split: with word timestamps
between words, otherwise proportionally to its characters over each speaker's speech time, the
cut snapped to a nearby sentence end (the whisper server has no word timestamps yet). Segment
edges are pulled in to the speech inside them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from server.transcript import Segment, SpeakerTurn



MIN_SPLIT_S = 0.6  # a second speaker must talk this long inside a segment to split it
WORD_RE = re.compile(r"\s*\S+")


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
        pieces.append(replace(seg, start=round(t0, 3), end=round(max(t1, t0), 3), text="".join(words[a:b]),
                              tokens=(), speaker=speaker, words=()))
    # neighbours that ended up with one speaker (after snapping) become one piece
    out: list[Segment] = []
    for p in pieces:
        if out and out[-1].speaker == p.speaker:
            out[-1] = replace(out[-1], end=p.end, text=out[-1].text + p.text)
        else:
            out.append(p)
    return out


def assign_speakers(segments: Sequence[Segment], turns: Sequence[SpeakerTurn], *, nearest_s: float = 2.0) -> list[Segment]:
    """Give every segment the speaker it overlaps most (interval tree), splitting at speaker changes.

    Args:
        segments: transcript segments, absolute times, in order.
        turns: global speaker turns (absolute times) with confidences.
        nearest_s: a segment overlapping no turn takes the nearest turn's speaker within this
            many seconds (at half its confidence); otherwise it keeps ``speaker=None``.

    Returns:
        segments with ``speaker`` and ``confidence`` set, renumbered from 0. Segments with word
        timestamps are split between words; others proportionally (``split_segment``).
    """
    from intervaltree import IntervalTree

    tree = IntervalTree()
    for t in turns:
        if t.end > t.start:
            tree.addi(t.start, t.end, t)
    out: list[Segment] = []
    for seg in segments:
        hits = [iv.data for iv in tree.overlap(seg.start, max(seg.end, seg.start + 1e-3))]
        if not hits:
            out.append(_nearest(seg, tree, nearest_s))
            continue
        per: dict[str, float] = {}
        for t in hits:
            per[t.speaker] = per.get(t.speaker, 0.0) + min(t.end, seg.end) - max(t.start, seg.start)
        ranked = sorted(per.items(), key=lambda kv: -kv[1])
        if seg.words:
            out.extend(_trim_to_speech(p, hits) for p in _split_by_words(seg, tree, ranked[0][0]))
            continue
        if len(ranked) > 1 and ranked[1][1] >= MIN_SPLIT_S:
            pieces = split_segment(seg, _timeline(hits, seg.start, seg.end))
        else:
            pieces = [replace(seg, speaker=ranked[0][0])]
        for p in pieces:
            p = _trim_to_speech(p, hits)
            conf = _confidence(hits, p.speaker, p.start, max(p.end, p.start + 1e-3))
            out.append(replace(p, confidence=conf))
    return [replace(s, id=i) for i, s in enumerate(out)]


def _trim_to_speech(seg: Segment, turns: Sequence[SpeakerTurn]) -> Segment:
    """Pull the segment's edges in to the first and last speech (any speaker's turn) inside it:
    Whisper's segment times often include the pauses around a sentence."""
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


def _split_by_words(seg: Segment, tree, majority: str) -> list[Segment]:
    """Each word to the speaker it overlaps most (a neighbour's when none, else the segment's
    ``majority`` speaker); runs of one speaker become segments."""
    labelled = []
    for w in seg.words:
        hits = [iv.data for iv in tree.overlap(w.start, max(w.end, w.start + 1e-3))]
        if hits:
            best = max(hits, key=lambda t: min(t.end, w.end) - max(t.start, w.start))
            labelled.append(replace(w, speaker=best.speaker))
        else:
            labelled.append(replace(w, speaker=labelled[-1].speaker if labelled else None))
    if labelled and labelled[0].speaker is None:
        first = next((w.speaker for w in labelled if w.speaker), majority)
        labelled = [replace(w, speaker=w.speaker or first) for w in labelled]
    runs: list[list] = []
    for w in labelled:
        if runs and runs[-1][0].speaker == w.speaker:
            runs[-1].append(w)
        else:
            runs.append([w])
    all_hits = [iv.data for iv in tree.overlap(seg.start, seg.end)]
    out = []
    for i, run in enumerate(runs):
        start = seg.start if i == 0 else run[0].start
        end = seg.end if i == len(runs) - 1 else run[-1].end
        out.append(replace(seg, start=start, end=end, text="".join(w.word for w in run), words=tuple(run),
                           tokens=() if len(runs) > 1 else seg.tokens, speaker=run[0].speaker,
                           confidence=_confidence(all_hits, run[0].speaker, start, end)))
    return out
