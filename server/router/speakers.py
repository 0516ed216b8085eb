"""Linking window-local speakers into global ones, and naming them.

The sidecar diarizes each window on its own, so ``speaker_0`` of one window and of the next need
not be one person. Each local speaker comes with a fingerprint (unit-norm speaker embedding);
``link_speakers`` clusters them offline, ``OnlineLinker`` one window at a time for streams, and
``name_speakers`` / ``StreamSpeakers`` give the clusters OpenAI's names: ``A, B, …`` by first
appearance, or ``known_speaker_names`` whose reference clips match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from server.core.transcript import SpeakerTurn
from server.router.clients import Diarization

# CAM++ (the sidecar's pyannote-style backend): 0.66 is the cosine of the sidecar's clustering
# threshold when it was 0.825 (centroid distance between unit vectors: 1 - 0.825²/2); the sidecar
# moved to 0.8 (cosine 0.68) for longer files; the link threshold is its own parameter and stays 0.66
# (at 0.68, with 1.5 s pieces, tests/test_router_e2e.py's voices were split across windows;
# bench/NOTES.md). Known speakers (a 2-10 s reference against a speaker's fingerprint) at 0.45:
# CAM++ cosines measured on stretches of one speaker talking alone were 0.58-0.76 for the same AMI
# speaker and 0.01-0.12 for different ones (espeak voices: >= 0.82 same, <= 0.26 different).
LINK_THRESHOLDS = {"titanet": 0.50, "resemblyzer": 0.80, "campplus": 0.66}
KNOWN_THRESHOLDS = {"titanet": 0.40, "resemblyzer": 0.75, "campplus": 0.45}
DEFAULT_LINK_THRESHOLD = 0.75
MARGIN_SCALE = 0.05  # cosine-similarity margin that moves a link's confidence from 0.5 to 0.73


def embedder_family(name: str) -> str:
    """``"titanet"``, ``"resemblyzer"``, ``"campplus"`` or ``""`` from an embedder description
    (``"CAM++ 3D-Speaker campplus_cn_en_common.pt (192-d)"`` is ``"campplus"``)."""
    low = name.lower().replace("cam++", "campplus")
    return next((k for k in LINK_THRESHOLDS if k in low), "")


def default_threshold(embedder: str, table: dict[str, float] = LINK_THRESHOLDS) -> float:
    return table.get(embedder_family(embedder), DEFAULT_LINK_THRESHOLD)


@dataclass(frozen=True, eq=False)
class LocalSpeaker:
    """A speaker label of one diarization window, with its fingerprint (unit norm) and own speech."""

    window: int
    label: str
    fingerprint: np.ndarray | None
    speech_s: float = 1.0
    first: float = 0.0  # absolute time of its first turn

    @property
    def key(self) -> tuple[int, str]:
        return self.window, self.label


@dataclass(frozen=True)
class Link:
    """Which global speaker (cluster id) a local speaker is, and how sure: ``None`` = unlinked."""

    cluster: int | None
    confidence: float


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _margin_confidence(own: float, other: float) -> float:
    """Logistic in the margin between the similarity to its own cluster and to the best other one."""
    return float(1.0 / (1.0 + np.exp(-(own - other) / MARGIN_SCALE)))


def local_speakers(diarizations: Sequence[tuple[int, Diarization | None]]) -> list[LocalSpeaker]:
    """Local speakers of every diarized window (``(window index, result)`` with absolute times;
    ``None`` = failed)."""
    out = []
    for w, d in diarizations:
        if d is None:
            continue
        speech: dict[str, float] = {}
        first: dict[str, float] = {}
        for t in d.turns:
            speech[t.speaker] = speech.get(t.speaker, 0.0) + (t.end - t.start)
            first.setdefault(t.speaker, t.start)
        for label in dict.fromkeys([*d.speakers, *speech]):
            if label not in speech:
                continue
            fp = d.fingerprints.get(label)
            out.append(
                LocalSpeaker(
                    w, label, None if fp is None else _unit(np.asarray(fp, np.float32)), speech[label], first[label]
                )
            )
    return out


def link_speakers(
    speakers: Sequence[LocalSpeaker], threshold: float, *, max_clusters: int | None = None
) -> dict[tuple[int, str], Link]:
    """Offline linking: agglomerative clustering of the fingerprints (centroid linkage).

    Clusters start as single local speakers; the two clusters whose speech-weighted centroids are
    most cosine-similar merge while that similarity is above ``threshold``, and past it while there
    are more than ``max_clusters`` (the client's ``num_speakers`` / ``max_speakers``; None: no cap).
    Two clusters that share a window (the diarizer called them different people) must clear a
    stricter bar, halfway from
    ``threshold`` to 1, so a diarizer's over-split speaker can still be joined but two similar
    voices of one window are not. Each local speaker's confidence is a logistic of the margin
    between its similarity to the rest of its cluster (or ``threshold`` when alone) and to the
    best other cluster: low when it matched no cluster well, or two about equally.

    With a single window there is nothing to link: every speaker keeps its own cluster at
    confidence 1. Speakers without a fingerprint stay unlinked (``Link(None, 0.0)``) unless there
    is only one window.

    Written out rather than taken from a library: sklearn's ``AgglomerativeClustering`` has no
    centroid linkage (average linkage over window-penalised cosine distances joins the two similar
    voices of one window; complete linkage over-splits: ARI 0.48 against this on simulated 12-window
    meetings), and scipy's ``linkage(method="centroid")`` takes neither speech weights nor the
    window penalty, which grows with every merge (it joins those two voices too).
    """
    windows = {s.window for s in speakers}
    if len(windows) <= 1:
        return {s.key: Link(i, 1.0) for i, s in enumerate(speakers)}
    have = [s for s in speakers if s.fingerprint is not None]
    links: dict[tuple[int, str], Link] = {s.key: Link(None, 0.0) for s in speakers if s.fingerprint is None}
    if not have:
        return links
    penalty = (1.0 - threshold) / 2
    vecs = np.stack([s.fingerprint for s in have]).astype(np.float64)
    weights = np.array([max(s.speech_s, 1e-3) for s in have])
    sums = vecs * weights[:, None]  # cluster i: weighted sum of members
    members: list[list[int] | None] = [[i] for i in range(len(have))]
    win_sets: list[set[int] | None] = [{s.window} for s in have]
    cents = np.stack([_unit(v) for v in sums])
    sims = cents @ cents.T
    same = np.array([[a.window == b.window for b in have] for a in have])
    sims[same] -= penalty
    np.fill_diagonal(sims, -np.inf)
    alive_count = len(have)
    while True:
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        over_cap = max_clusters is not None and alive_count > max_clusters
        if not np.isfinite(sims[a, b]) or (sims[a, b] <= threshold and not over_cap):
            break
        alive_count -= 1
        a, b = min(a, b), max(a, b)
        members[a] = members[a] + members[b]
        win_sets[a] = win_sets[a] | win_sets[b]
        sums[a] += sums[b]
        members[b] = win_sets[b] = None
        sims[b, :] = sims[:, b] = -np.inf
        cents[a] = _unit(sums[a])
        row = cents @ cents[a]
        for j, ws in enumerate(win_sets):
            if ws is None or j == a:
                row[j] = -np.inf
            elif ws & win_sets[a]:
                row[j] -= penalty
        sims[a, :] = sims[:, a] = row
    alive = [i for i, m in enumerate(members) if m is not None]
    for new_id, c in enumerate(alive):
        for i in members[c]:
            rest = sums[c] - vecs[i] * weights[i]
            own = float(vecs[i] @ _unit(rest)) if len(members[c]) > 1 else threshold
            others = [float(vecs[i] @ cents[d]) for d in alive if d != c]
            other = max(others) if others else -1.0
            links[have[i].key] = Link(new_id, round(_margin_confidence(own, other), 3))
    return links


class OnlineLinker:
    """Streaming linking: windows arrive in order; each window's speakers are matched one-to-one
    (Hungarian) to the clusters so far, or open new clusters when no match is above ``threshold``;
    once there are ``max_clusters`` (the client's cap; None: none), an unmatched speaker joins its
    most similar cluster instead. Links once given are never changed (they were already sent to the
    client)."""

    def __init__(self, threshold: float, max_clusters: int | None = None) -> None:
        self.threshold = threshold
        self.max_clusters = max_clusters
        self.sums: list[np.ndarray] = []
        self.first_window: int | None = None

    def _real(self) -> list[int]:
        """Clusters with a fingerprint (not the placeholders of speakers without one)."""
        return [i for i, v in enumerate(self.sums) if v.shape[0] > 1]

    def add(self, speakers: Sequence[LocalSpeaker]) -> dict[tuple[int, str], Link]:
        """Link the local speakers of one window (all of the same window)."""
        from scipy.optimize import linear_sum_assignment

        links: dict[tuple[int, str], Link] = {}
        have = [s for s in speakers if s.fingerprint is not None]
        if self.first_window is None:
            self.first_window = speakers[0].window if speakers else None
        first = bool(speakers) and speakers[0].window == self.first_window
        for s in speakers:
            if s.fingerprint is None:
                if first:  # the first window defines the clusters: nothing to link yet
                    self.sums.append(np.zeros(1))  # placeholder cluster, never matched
                    links[s.key] = Link(len(self.sums) - 1, 1.0)
                else:
                    links[s.key] = Link(None, 0.0)
        live = self._real()
        matched: dict[int, int] = {}
        sims = np.zeros((len(have), len(live)))
        if have and live:
            cents = np.stack([_unit(self.sums[i]) for i in live])
            sims = np.stack([s.fingerprint for s in have]) @ cents.T
            rows, cols = linear_sum_assignment(-sims)
            matched = {r: c for r, c in zip(rows, cols) if sims[r, c] > self.threshold}
        for r, s in enumerate(have):
            w = max(s.speech_s, 1e-3)
            if r in matched:
                c = matched[r]
                cluster = live[c]
                other = max([sims[r, k] for k in range(len(live)) if k != c] or [-1.0])
                conf = _margin_confidence(float(sims[r, c]), float(other))
                self.sums[cluster] = self.sums[cluster] + s.fingerprint.astype(np.float64) * w
            elif self.max_clusters is not None and len(self.sums) >= self.max_clusters and (real := self._real()):
                # at the cap (also within the first window): the most similar cluster so far
                now = np.array([float(s.fingerprint @ _unit(self.sums[i])) for i in real])
                k = int(np.argmax(now))
                cluster = real[k]
                conf = _margin_confidence(float(now[k]), float(max(np.delete(now, k), default=-1.0)))
                self.sums[cluster] = self.sums[cluster] + s.fingerprint.astype(np.float64) * w
            else:
                best = float(sims[r].max()) if len(live) else -1.0
                conf = 1.0 if first else _margin_confidence(self.threshold, best)
                self.sums.append(s.fingerprint.astype(np.float64) * w)
                cluster = len(self.sums) - 1
            links[s.key] = Link(cluster, round(conf, 3))
        return links

    def centroid(self, cluster: int) -> np.ndarray | None:
        v = self.sums[cluster]
        return _unit(v) if v.shape[0] > 1 else None


def speaker_letter(i: int) -> str:
    """0 → A, 25 → Z, 26 → AA, … (OpenAI labels unnamed speakers A, B, C, …)."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


@dataclass(frozen=True, eq=False)
class KnownSpeaker:
    """A ``known_speaker_names[i]`` with the fingerprint of ``known_speaker_references[i]``."""

    name: str
    fingerprint: np.ndarray


def name_speakers(
    clusters: Sequence[int],
    centroids: dict[int, np.ndarray | None],
    known: Sequence[KnownSpeaker] = (),
    threshold: float = 0.75,
) -> dict[int, str]:
    """Cluster ids (in order of first appearance) → names.

    Known speakers are matched one-to-one to clusters by cosine similarity (Hungarian assignment);
    a match counts only above ``threshold``. The other clusters are ``A, B, C, …`` in order, skipping
    letters that are known names.
    """
    names: dict[int, str] = {}
    cands = [c for c in clusters if centroids.get(c) is not None]
    if known and cands:
        from scipy.optimize import linear_sum_assignment

        sims = np.stack([centroids[c] for c in cands]) @ np.stack([k.fingerprint for k in known]).T
        for r, k in zip(*linear_sum_assignment(-sims)):
            if sims[r, k] >= threshold:
                names[cands[r]] = known[k].name
    taken = set(names.values())
    n = 0
    for c in clusters:
        if c in names:
            continue
        while speaker_letter(n) in taken:
            n += 1
        names[c] = speaker_letter(n)
        n += 1
    return names


def cluster_centroids(
    speakers: Sequence[LocalSpeaker], links: dict[tuple[int, str], Link]
) -> dict[int, np.ndarray | None]:
    """Speech-weighted unit centroid of every cluster's fingerprints (None: no fingerprint)."""
    sums: dict[int, np.ndarray | None] = {}
    for s in speakers:
        c = links[s.key].cluster
        if c is None:
            continue
        sums.setdefault(c, None)
        if s.fingerprint is not None:
            v = s.fingerprint.astype(np.float64) * max(s.speech_s, 1e-3)
            sums[c] = v if sums[c] is None else sums[c] + v
    return {c: None if v is None else _unit(v) for c, v in sums.items()}


def global_turns(results: Sequence[tuple[int, Diarization]], links: dict[tuple[int, str], Link]) -> list[SpeakerTurn]:
    """Every window's turns relabelled with their cluster id (as a string); turn confidence × link
    confidence. Turns of unlinked speakers are dropped."""
    out = []
    for w, d in results:
        for t in d.turns:
            link = links.get((w, t.speaker))
            if link is None or link.cluster is None:
                continue
            conf = link.confidence * (1.0 if t.confidence is None else t.confidence)
            out.append(replace(t, speaker=str(link.cluster), confidence=round(conf, 3)))
    return sorted(out, key=lambda t: (t.start, t.end))


class StreamSpeakers:
    """Global speaker names for a stream: windows linked online, names given once and kept."""

    def __init__(
        self,
        link_threshold: float,
        known_threshold: float,
        known: Sequence[KnownSpeaker],
        max_speakers: int | None = None,
    ) -> None:
        self.linker = OnlineLinker(link_threshold, max_speakers)
        self.known = list(known)
        self.known_threshold = known_threshold
        self.names: dict[int, str] = {}

    def _name(self, cluster: int) -> str:
        taken = set(self.names.values())
        cent = self.linker.centroid(cluster)
        if cent is not None:
            sims = [(float(cent @ k.fingerprint), k.name) for k in self.known if k.name not in taken]
            if sims and max(sims)[0] >= self.known_threshold:
                return max(sims)[1]
        reserved = taken | {k.name for k in self.known}
        i = 0
        while speaker_letter(i) in reserved:
            i += 1
        return speaker_letter(i)

    def add(self, window: int, d: Diarization) -> list[SpeakerTurn]:
        """One window's diarization (absolute times) → its turns under global names."""
        locals_ = sorted(local_speakers([(window, d)]), key=lambda s: s.first)
        links = self.linker.add(locals_)
        for s in locals_:
            c = links[s.key].cluster
            if c is not None and c not in self.names:
                self.names[c] = self._name(c)
        turns = []
        for t in d.turns:
            link = links.get((window, t.speaker))
            if link is None or link.cluster is None:
                continue
            conf = link.confidence * (1.0 if t.confidence is None else t.confidence)
            turns.append(replace(t, speaker=self.names[link.cluster], confidence=round(conf, 3)))
        return turns
