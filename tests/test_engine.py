"""Engine pieces: features, window planning, timestamp segments, batching; real-model accuracy."""

from __future__ import annotations

import threading

import jiwer
import numpy as np
import pytest

from jax_models.decoding import compression_ratio, split_segments
from jax_models.engine import TranscribeOptions
from jax_models.features import LogMel
from server.core.audio import SAMPLE_RATE
from server.core.windows import plan_windows
from tests.conftest import SENTENCE
from tests.speech import espeak_samples, silence


def normalise(text: str) -> str:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()(text).strip()


def test_log_mel_matches_transformers(tiny_whisper_dir, speech_samples):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(tiny_whisper_dir)
    ours = LogMel(np.asarray(fe.mel_filters, np.float32).T)([speech_samples])[0]
    theirs = fe(speech_samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    assert ours.shape == theirs.shape == (80, 3000)
    assert np.abs(ours - theirs).max() < 2e-3


def test_plan_windows_cuts_in_silence():
    rng = np.random.default_rng(0)
    speech = lambda s: (rng.standard_normal(int(s * SAMPLE_RATE)) * 0.3).astype(np.float32)  # noqa: E731
    audio = np.concatenate([speech(27.0), silence(0.5), speech(25.0), silence(0.4), speech(25.0)])
    windows = plan_windows(audio)
    assert windows[0][0] == 0 and windows[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))  # contiguous, no overlap
    assert all(0 < b - a <= 30 * SAMPLE_RATE for a, b in windows)
    for _, cut in windows[:-1]:  # every cut lies inside one of the two pauses
        assert 27.0 * SAMPLE_RATE <= cut <= 27.5 * SAMPLE_RATE or 52.5 * SAMPLE_RATE <= cut <= 52.9 * SAMPLE_RATE
    assert plan_windows(np.zeros(100, np.float32)) == [(0, 100)]


def test_split_segments_follows_timestamp_pairs():
    tsb = 1000
    ts = lambda s: tsb + int(round(s / 0.02))  # noqa: E731
    tokens = [ts(0.0), 1, 2, ts(1.5), ts(1.5), 3, ts(3.0), ts(3.2), 4, 5]
    segs = split_segments(tokens, tsb, window_s=10.0)
    assert [(s.start, s.end, s.tokens) for s in segs] == [(0.0, 1.5, (1, 2)), (1.5, 3.0, (3,)), (3.2, 10.0, (4, 5))]
    single_end = split_segments([ts(0.4), 7, 8, ts(2.0)], tsb, window_s=10.0)
    assert [(s.start, s.end, s.tokens) for s in single_end] == [(0.4, 2.0, (7, 8))]
    no_stamps = split_segments([7, 8], tsb, window_s=4.0)
    assert [(s.start, s.end) for s in no_stamps] == [(0.0, 4.0)]
    clamped = split_segments([ts(0.0), 7, ts(29.0), ts(29.0)], tsb, window_s=12.0)
    assert clamped[0].end == 12.0


def test_compression_ratio_flags_loops():
    assert compression_ratio("I will not let you down. " * 20) > 2.4
    assert compression_ratio(SENTENCE) < 2.4


def test_batched_equals_alone(tiny_engine, speech_samples):
    """The transcript of a request is the same alone or batched with other requests."""
    opts = TranscribeOptions(language="en")
    alone = tiny_engine.transcribe(speech_samples, opts)
    others = [speech_samples[::-1].copy(), speech_samples * 0.5]
    results: dict[int, object] = {}
    start = tiny_engine.batches_run

    def run(i, x):
        results[i] = tiny_engine.transcribe(x, opts)

    threads = [threading.Thread(target=run, args=(i, x)) for i, x in enumerate([speech_samples, *others])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].text == alone.text
    assert [s.tokens for s in results[0].segments] == [s.tokens for s in alone.segments]
    assert tiny_engine.batches_run > start


def test_text_only_rows_batch_with_timestamp_rows(tiny_engine, speech_samples):
    """A text-only window and a timestamped one share a batch (the same prefix bucket); each row
    keeps its own mode, so both equal their decodes alone."""
    from concurrent.futures import Future

    from jax_models.engine import _Job

    feats = tiny_engine.log_mel([speech_samples])[0]
    task = tiny_engine.ids.task_tokens("en", "transcribe")

    def jobs():
        return [
            _Job("decode", feats, task + [tiny_engine.ids.no_timestamps], 0.0, Future(), owner=1),
            _Job("decode", feats, task, 0.0, Future(), owner=2),
        ]

    alone = [tiny_engine._submit(job).result() for job in jobs()]
    start = tiny_engine.batches_run
    together = [f.result() for f in tiny_engine._submit_all(jobs())]
    assert tiny_engine.batches_run - start == 1  # one batch of both rows
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    tsb = tiny_engine.ids.timestamp_begin
    assert not any(t >= tsb for t in together[0].tokens)
    assert together[1].tokens[0] >= tsb  # the timestamped row starts with a timestamp, as the rules force


def test_short_request_not_starved_behind_long(tiny_engine, speech_samples):
    """A request's window is served within one batch of arriving, however many windows an earlier
    request queued (plain FIFO would serve it after all of them)."""
    from concurrent.futures import Future

    from jax_models.engine import _Job

    feats = tiny_engine.log_mel([speech_samples])[0]
    prefix = tiny_engine.ids.task_tokens("en", "transcribe")
    size = tiny_engine.batch_buckets[-1]
    served: dict[str, int] = {}
    with tiny_engine._cv:  # queue everything before the scheduler looks
        long = [_Job("decode", feats, prefix, 0.0, Future(), owner=10_001) for _ in range(4 * size)]
        short = _Job("decode", feats, prefix, 0.0, Future(), owner=10_002)
        tiny_engine._queue.extend([*long, short])
        start = tiny_engine.batches_run
        short.future.add_done_callback(lambda _: served.setdefault("short", tiny_engine.batches_run - start))
        long[-1].future.add_done_callback(lambda _: served.setdefault("long", tiny_engine.batches_run - start))
        tiny_engine._cv.notify()
    short.future.result(timeout=120)
    long[-1].future.result(timeout=120)
    assert served["short"] <= 1, served
    assert served["long"] > served["short"]


def test_kv_cache_decoder_matches_transformers(tiny_engine):
    """jax_models.functional (cached cross K/V, KV cache, left-padded prefix) gives the logits of
    transformers' PyTorch Whisper, the reference implementation, for the same weights and audio."""
    import jax.numpy as jnp
    import torch
    from transformers import WhisperForConditionalGeneration

    from jax_models import functional as fn

    engine = tiny_engine
    assert engine.kv_cache
    hf = WhisperForConditionalGeneration.from_pretrained(engine.model_path).eval()
    mel = engine.log_mel([np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1])
    tokens = engine.ids.task_tokens("en", "transcribe") + [engine.ids.timestamp_begin, 400, 401, 402]
    with torch.no_grad():
        ref_enc = hf.model.encoder(torch.tensor(mel)).last_hidden_state
        ref = hf(encoder_outputs=(ref_enc,), decoder_input_ids=torch.tensor([tokens])).logits[0].numpy()
    state = engine._state["fn"]
    enc = fn.encode(state["encoder"], jnp.asarray(mel), int(hf.config.encoder_attention_heads))
    np.testing.assert_allclose(np.asarray(enc), ref_enc.numpy(), atol=2e-3, rtol=1e-3)
    heads = int(hf.config.decoder_attention_heads)
    P = 12  # left padding: 12 - 3 task tokens
    prefix, rest = tokens[:3], tokens[3:]
    padded = jnp.asarray([[0] * (P - 3) + prefix])
    mask = jnp.asarray([[False] * (P - 3) + [True] * 3])
    cache = fn.init_cache(state["decoder"], enc, heads, P + len(rest))
    hidden, cache = fn.forward(state["decoder"], cache, padded, jnp.cumsum(mask, -1) - 1, jnp.int32(0), mask, heads)
    got = [np.asarray(fn.logits(state["decoder"], hidden[:, -1]))[0]]
    for i, tok in enumerate(rest):  # one token at a time through the KV cache
        hidden, cache = fn.forward(
            state["decoder"],
            cache,
            jnp.asarray([[tok]]),
            jnp.asarray([[3 + i]]),
            jnp.int32(P + i),
            jnp.ones((1, 1), bool),
            heads,
        )
        got.append(np.asarray(fn.logits(state["decoder"], hidden[:, 0]))[0])
    np.testing.assert_allclose(np.stack(got), ref[2:], atol=2e-3, rtol=1e-3)


def test_two_workers_give_the_same_transcripts(tiny_whisper_dir, tiny_engine, speech_samples):
    """Two scheduler threads (two batches at once) change nothing in any request's transcript."""
    from jax_models.engine import WhisperEngine

    opts = TranscribeOptions(language="en")
    inputs = [speech_samples, speech_samples[::-1].copy(), speech_samples * 0.5, np.tile(speech_samples, 3)]
    expected = [tiny_engine.transcribe(x, opts).text for x in inputs]
    engine = WhisperEngine(str(tiny_whisper_dir), batch_size=2, max_new_tokens=32, workers=2)
    try:
        assert len(engine._threads) == 2
        results: dict[int, str] = {}
        threads = [
            threading.Thread(target=lambda i=i, x=x: results.__setitem__(i, engine.transcribe(x, opts).text))
            for i, x in enumerate(inputs)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [results[i] for i in range(len(inputs))] == expected
    finally:
        engine.close()


def test_prompt_changes_prefix_not_shape(tiny_engine, speech_samples):
    toks = tiny_engine.prompt_tokens("Chorus, EasyDeL and Whisper.")
    assert toks[0] == tiny_engine.ids.sot_prev and len(toks) > 3
    long = tiny_engine.prompt_tokens("word " * 1000)
    assert len(long) <= 224 - 7
    out = tiny_engine.transcribe(speech_samples, TranscribeOptions(language="en", prompt="Hello there."))
    assert out.duration == pytest.approx(len(speech_samples) / SAMPLE_RATE)


def test_invalid_options_raise(tiny_engine, speech_samples):
    with pytest.raises(ValueError):
        tiny_engine.transcribe(speech_samples, TranscribeOptions(task="summarise"))
    with pytest.raises(ValueError):
        tiny_engine.transcribe(speech_samples, TranscribeOptions(language="tlh"))


@pytest.mark.slow
def test_base_model_english_wer(base_engine, speech_samples):
    out = base_engine.transcribe(speech_samples, TranscribeOptions())
    assert out.language == "en"
    wer = jiwer.wer(normalise(SENTENCE), normalise(out.text))
    assert wer < 0.15, (wer, out.text)


@pytest.mark.slow
def test_base_model_without_timestamps(base_engine, speech_samples):
    """Text tokens only (what json/text responses use): as accurate, no timestamp token sampled,
    one segment per window."""
    out = base_engine.transcribe(speech_samples, TranscribeOptions(language="en", without_timestamps=True))
    wer = jiwer.wer(normalise(SENTENCE), normalise(out.text))
    assert wer < 0.15, (wer, out.text)
    assert len(out.segments) == 1 and out.segments[0].start == 0.0
    assert all(t < base_engine.ids.eot for s in out.segments for t in s.tokens)


@pytest.mark.slow
def test_base_model_translates_french(base_engine, tmp_path):
    french = "Bonjour, je voudrais acheter du pain et un café, s'il vous plaît. Merci beaucoup."
    samples = espeak_samples(french, voice="fr", speed=140)
    out = base_engine.transcribe(samples, TranscribeOptions(task="translate", language="fr"))
    words = set(normalise(out.text).split())
    assert out.task == "translate"
    assert words & {"bread", "coffee", "thank", "thanks", "buy", "please", "hello", "like"}, out.text


@pytest.mark.slow
def test_base_model_long_form_keeps_words_at_cuts(base_engine, tmp_path):
    script = [
        "Once upon a time there was a small village beside a wide river.",
        "Every morning the baker opened his shop and sold warm bread to the farmers.",
        "The children walked to school along the river and counted the boats.",
        "In the afternoon the fishermen came back with baskets full of silver fish.",
        "At night the lights of the village shone on the dark water.",
    ] * 2
    pieces = []
    for line in script:
        pieces += [espeak_samples(line, speed=165), silence(0.25)]
    audio = np.concatenate(pieces)
    assert len(audio) > 35 * SAMPLE_RATE  # more than one 30 s window
    out = base_engine.transcribe(audio, TranscribeOptions(language="en"))
    wer = jiwer.wer(normalise(" ".join(script)), normalise(out.text))
    assert wer < 0.15, (wer, out.text)
    assert out.segments[-1].end > 35.0
    assert all(a.start <= b.start for a, b in zip(out.segments, out.segments[1:]))


@pytest.mark.slow
def test_base_model_word_timestamps_follow_the_audio(base_engine, speech_samples):
    """Words come from cross-attention DTW: 3 s of leading silence must move every word by ~3 s."""
    plain = base_engine.transcribe(speech_samples, TranscribeOptions(language="en", word_timestamps=True))
    shifted = base_engine.transcribe(
        np.concatenate([silence(3.0), speech_samples]), TranscribeOptions(language="en", word_timestamps=True)
    )
    for out in (plain, shifted):
        words = out.words
        assert "".join(w.word for w in words).strip() == out.text
        assert all(w.start <= w.end for w in words)
        assert all(a.start <= b.start for a, b in zip(words, words[1:]))
        assert words[-1].end <= out.duration + 0.05
    assert plain.words[0].start < 1.0
    assert shifted.words[0].start >= 2.5
    import difflib  # the two decodes may differ by a word; compare the words they share

    a_words, b_words = [w.word for w in plain.words], [w.word for w in shifted.words]
    pairs = [
        (plain.words[m.a + k], shifted.words[m.b + k])
        for m in difflib.SequenceMatcher(a=a_words, b=b_words).get_matching_blocks()
        for k in range(m.size)
    ]
    assert len(pairs) >= 0.8 * len(a_words)
    offsets = [b.start - a.start for a, b in pairs]
    assert np.median(offsets) == pytest.approx(3.0, abs=0.3)


def test_tiled_attention_equals_plain():
    """The encoder's tiled attention is the same maths as the plain one (and falls back on odd shapes)."""
    import jax.numpy as jnp

    from jax_models import functional as fn

    rng = np.random.default_rng(0)
    for shape in ((2, 8, 1500, 16), (1, 6, 50, 8)):
        q, k, v = (jnp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(3))
        np.testing.assert_allclose(
            np.asarray(fn._attend_tiled(q, k, v)), np.asarray(fn._attend(q, k, v, None)), atol=1e-5, rtol=1e-5
        )


def test_tiled_attention_in_bfloat16_products_stays_close(tiny_whisper_dir, monkeypatch):
    """bfloat16 operands with float32 accumulation and softmax: within 1 % of the float32
    attention (the int8 engine's default on CPUs with bfloat16 matrix instructions, and only there)."""
    import jax.numpy as jnp

    import jax_models.engine as engine_mod
    from jax_models import functional as fn

    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 8, 1500, 64)).astype(np.float32) * s) for s in (1.5, 1.5, 1.0))
    exact = np.asarray(fn._attend_tiled(q, k, v))
    bf16 = np.asarray(fn._attend_tiled(q, k, v, product_dtype=jnp.bfloat16))
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, exact)  # the products did change
    assert np.linalg.norm(bf16 - exact) / np.linalg.norm(exact) < 0.01
    for has_bf16, quantization, expected in (
        (True, "int8", "bfloat16"),
        (False, "int8", "float32"),
        (True, "none", "float32"),
    ):
        monkeypatch.setattr(engine_mod, "_cpu_has_bf16", lambda has=has_bf16: has)
        eng = engine_mod.WhisperEngine(str(tiny_whisper_dir), quantization=quantization, batch_size=1)
        try:
            assert eng.encoder_attention == expected and eng.describe()["encoder_attention"] == expected
        finally:
            eng.close()


def test_int8_linear_is_ctranslate2s_int8_scheme():
    """``functional.Int8Linear``: int8 weights with one scale per output channel times activations
    quantized per row at run time, int32 accumulation: equal to a numpy reference of that scheme
    (an all-zero row stays zero), exact where the scheme is lossless, within 2 % of float."""
    import jax.numpy as jnp

    from jax_models import functional as fn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 64)).astype(np.float32)
    x[1, 2] = 0.0
    w = (rng.standard_normal((64, 96)) * 0.1).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    got = np.asarray(fn._linear(jnp.asarray(x), fn._int8_kernel(jnp.asarray(w)), jnp.asarray(b)))
    sw = np.abs(w).max(0) / 127
    sx = np.maximum(np.abs(x).max(-1, keepdims=True) / 127, np.float32(1e-30))
    ref = (np.round(x / sx) @ np.round(w / sw)) * sx * sw + b
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[1, 2], b, rtol=1e-6)
    assert np.linalg.norm(got - (x @ w + b)) / np.linalg.norm(x @ w + b) < 0.02
    xi = rng.integers(-127, 128, (4, 64)).astype(np.float32)
    wi = rng.integers(-127, 128, (64, 8)).astype(np.float32)
    xi[:, 0], wi[0] = 127, 127  # scale 1: integers are represented exactly
    np.testing.assert_array_equal(np.asarray(fn._linear(jnp.asarray(xi), fn._int8_kernel(jnp.asarray(wi)))), xi @ wi)


def test_int8_engine_quantizes_every_linear_layer_and_keeps_the_logits(tiny_engine, tiny_whisper_dir, speech_samples):
    """``quantization="int8"`` loads the functional backend with every linear kernel and the output
    projection as ``Int8Linear`` (nothing else), its encoder states and logits stay within a few
    percent of float32's, and it transcribes."""
    import jax
    import jax.numpy as jnp

    from jax_models import functional as fn
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(tiny_whisper_dir), quantization="int8", batch_size=1, max_new_tokens=4)
    try:
        assert engine.backend == "functional"
        q, f = engine._state["fn"], tiny_engine._state["fn"]
        is_q = lambda a: isinstance(a, fn.Int8Linear)  # noqa: E731
        for layer in q["encoder"]["layers"] + q["decoder"]["layers"]:
            assert {k for k, v in layer.items() if is_q(v)} == {k for k in layer if k.endswith("_w")}
        assert is_q(q["decoder"]["proj"]) and not any(is_q(v) for k, v in q["encoder"].items() if k != "layers")
        heads = int(engine.model.config.encoder_attention_heads)
        mel = jnp.asarray(engine.log_mel([speech_samples[: 16000 * 5]]))
        enc_q, enc_f = fn.encode(q["encoder"], mel, heads), fn.encode(f["encoder"], mel, heads)
        assert float(jnp.linalg.norm(enc_q - enc_f) / jnp.linalg.norm(enc_f)) < 0.05
        hidden = jax.random.normal(jax.random.key(0), (2, enc_f.shape[-1]))
        lq, lf = fn.logits(q["decoder"], hidden), fn.logits(f["decoder"], hidden)
        assert lq.dtype == jnp.float32 and float(jnp.linalg.norm(lq - lf) / jnp.linalg.norm(lf)) < 0.05
        assert engine.transcribe(speech_samples[: 16000 * 2]).segments is not None
    finally:
        engine.close()


def toy_ids():
    """Whisper's special tokens on a 120-token vocabulary (text 0-39, timestamps from 45), for
    filter tests that need no model."""
    from jax_models.decoding import SpecialTokens

    return SpecialTokens(
        eot=40,
        sot=41,
        sot_prev=42,
        no_speech=43,
        no_timestamps=44,
        timestamp_begin=45,
        transcribe=46,
        translate=47,
        lang_to_id={},
        blank=(1,),
        suppress=(),
        multilingual=False,
    )


def test_timestamp_rules_see_the_history():
    """A continuation's filters treat the window's own tokens as already sampled: at every step
    they equal the filters of one fresh decode that sampled history + generated, except that the
    first continued step bars end-of-text/blank and skips the initial-timestamp rule. The
    returned log-probabilities are the log-softmax of the returned logits."""
    import jax
    import jax.numpy as jnp

    from jax_models.decoding import apply_logit_filters, prefix_history

    ids = toy_ids()
    V, M, P = 120, 16, 12
    ts = lambda k: ids.timestamp_begin + k  # noqa: E731
    seqs = [
        [ts(0), 5, 6, ts(20), ts(20), 7, 8, ts(40)],  # ends on a closing timestamp
        [ts(0), 5, 6, ts(20), ts(20), 7, 8],  # ends inside a segment
        [ts(3), 9, ts(10), ts(10)],
    ]  # ends on a timestamp pair
    rng = np.random.default_rng(0)
    suppress = jnp.zeros((V,), bool)
    for seq in seqs:
        for h in range(1, len(seq)):
            hist, gen = seq[:h], seq[h:]
            logits = jnp.asarray(rng.standard_normal((1, V)).astype(np.float32) * 3)
            prefix = np.full((1, P), 0, np.int32)
            prefix[0, P - h - 1 :] = [ids.sot] + hist
            history = prefix_history(jnp.asarray(prefix), jnp.asarray([h], jnp.int32), ids)
            buf = np.full((1, M), ids.eot, np.int32)
            buf[0, : len(gen)] = gen
            got, got_lp = apply_logit_filters(
                logits, jnp.asarray(buf), jnp.int32(len(gen)), ids, suppress, history=history
            )
            full = np.full((1, M), ids.eot, np.int32)
            full[0, : len(seq)] = seq
            want, _ = apply_logit_filters(logits, jnp.asarray(full), jnp.int32(len(seq)), ids, suppress)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            np.testing.assert_allclose(np.asarray(got_lp), np.asarray(jax.nn.log_softmax(got, axis=-1)), atol=1e-5)
        # the first continued step: nothing sampled yet after the whole sequence
        prefix = np.full((1, P), 0, np.int32)
        prefix[0, P - len(seq) - 1 :] = [ids.sot] + seq
        history = prefix_history(jnp.asarray(prefix), jnp.asarray([len(seq)], jnp.int32), ids)
        logits = rng.standard_normal((1, V)).astype(np.float32) * 3
        logits[0, [ids.eot, 1]] = -np.inf  # what the first continued step bars, so both sides see the same
        got, _ = apply_logit_filters(
            jnp.asarray(logits), jnp.full((1, M), ids.eot, jnp.int32), jnp.int32(0), ids, suppress, history=history
        )
        full = np.full((1, M), ids.eot, np.int32)
        full[0, : len(seq)] = seq
        want, _ = apply_logit_filters(jnp.asarray(logits), jnp.asarray(full), jnp.int32(len(seq)), ids, suppress)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        # and end-of-text is barred there even when its logit is the largest
        top = np.zeros((1, V), np.float32)
        top[0, ids.eot] = 50.0
        got, _ = apply_logit_filters(
            jnp.asarray(top), jnp.full((1, M), ids.eot, jnp.int32), jnp.int32(0), ids, suppress, history=history
        )
        assert np.isneginf(np.asarray(got)[0, ids.eot])


def test_rows_without_timestamps_sample_text_only():
    """A row whose prefix ends with <|notimestamps|> has every timestamp barred at every step and
    no timestamp rule applied to its text; a row beside it keeps the rules."""
    import jax
    import jax.numpy as jnp

    from jax_models.decoding import apply_logit_filters, prefix_history

    ids = toy_ids()
    V = 120
    prefix = jnp.asarray([[0, ids.sot, ids.no_timestamps], [0, 0, ids.sot]], jnp.int32)
    history = prefix_history(prefix, jnp.zeros((2,), jnp.int32), ids)
    assert np.asarray(history.timestamps).tolist() == [False, True]
    rng = np.random.default_rng(1)
    generated = jnp.asarray([[5, 6, 7, 8, 9, 10, 11, 12]] * 2, jnp.int32)
    for step in range(4):
        logits = rng.standard_normal((2, V)).astype(np.float32)
        logits[:, ids.timestamp_begin :] += 5.0  # timestamps would win if allowed
        got, lp = apply_logit_filters(
            jnp.asarray(logits), generated, jnp.int32(step), ids, jnp.zeros((V,), bool), history=history
        )
        got = np.asarray(got)
        assert np.isneginf(got[0, ids.timestamp_begin :]).all()
        text = np.arange(ids.eot)
        allowed = text[text != 1] if step == 0 else text  # the blank is barred at the first step only
        np.testing.assert_array_equal(got[0, allowed], logits[0, allowed])
        assert np.isfinite(got[1, ids.timestamp_begin :]).any()  # the other row samples a timestamp
        np.testing.assert_allclose(np.asarray(lp), np.asarray(jax.nn.log_softmax(jnp.asarray(got), axis=-1)), atol=1e-5)


def test_window_that_stops_early_is_continued_on_its_encoder_states(tiny_engine, speech_samples):
    """Speech after a window's last segment gives a continuation job on the same encoder states
    (no second encoder pass); silence after it does not; an accepted continuation appends its
    tokens to the window's, a poor one (low average log-probability) is dropped."""

    from jax_models.engine import WindowResult

    eng = tiny_engine
    tsb = eng.ids.timestamp_begin
    text = eng.tokenizer.encode(" hello there", add_special_tokens=False)
    window = np.concatenate([speech_samples[: 4 * SAMPLE_RATE], speech_samples[: 4 * SAMPLE_RATE]])
    res = WindowResult(tokens=[tsb, *text, tsb + 150], avg_logprob=-0.2, no_speech_prob=0.0, temperature=0.0)
    feats = eng.log_mel([window])[0]
    encoded = eng._encode(eng._state, feats[None])
    opts = TranscribeOptions(language="en")
    job = eng._tail_job(window, (0, len(window)), (res, "hello there"), encoded, feats, "en", opts, owner=7)
    assert job is not None and job.encoded is encoded and job.history == len(res.tokens)
    assert job.prefix[-job.history :] == res.tokens and job.prefix[0] == eng.ids.sot
    quiet = np.concatenate([window[: 3 * SAMPLE_RATE], np.zeros(5 * SAMPLE_RATE, np.float32)])
    assert eng._tail_job(quiet, (0, len(quiet)), (res, "hello there"), encoded, feats, "en", opts, 7) is None

    calls = []
    encode = eng._encode
    eng._encode = lambda *a: calls.append(1) or encode(*a)
    try:
        cont = eng._submit(job).result()
    finally:
        eng._encode = encode
    assert calls == []  # the continuation reused the window's encoder states
    assert len(cont.tokens) >= 1

    more = eng.tokenizer.encode(" and more", add_special_tokens=False)
    good = WindowResult(tokens=[tsb + 150, *more, tsb + 300], avg_logprob=-0.3, no_speech_prob=0.0, temperature=0.0)
    merged, merged_text = eng._merge_tail((res, "hello there"), good, opts)
    assert merged.tokens == res.tokens + good.tokens and merged_text == "hello there and more"
    segments = eng._raw_segments((0, 30 * SAMPLE_RATE), (merged, merged_text))
    assert [round(s.end, 2) for s in segments] == [3.0, 6.0]
    poor = WindowResult(tokens=good.tokens, avg_logprob=-2.5, no_speech_prob=0.0, temperature=0.0)
    assert eng._merge_tail((res, "hello there"), poor, opts)[0] is res


def _mixed_jobs(eng, speech_samples, owner: int) -> list:
    """Six decode jobs of different kinds: greedy and sampled (T=0.4, 0.6), with timestamps and
    text-only, a continuation (history tokens in its prefix, prefix bucket 64), on four windows."""
    from concurrent.futures import Future

    from jax_models.engine import _Job

    x = speech_samples
    windows = [x, x[::-1].copy(), 0.3 * x, np.concatenate([x[: len(x) // 3], np.zeros(len(x) // 2, np.float32)])]
    feats = eng.log_mel(windows)
    task = eng.ids.task_tokens("en", "transcribe")
    tsb = eng.ids.timestamp_begin
    history = [tsb, *eng.tokenizer.encode(" hello there", add_special_tokens=False), tsb + 150]
    return [
        _Job("decode", feats[0], task, 0.4, Future(), owner),
        _Job("decode", feats[1], task + [eng.ids.no_timestamps], 0.6, Future(), owner),
        _Job("decode", feats[2], task, 0.6, Future(), owner),
        _Job("decode", feats[3], task + history, 0.0, Future(), owner, history=len(history)),
        _Job("decode", feats[3], task, 0.4, Future(), owner),
        _Job("decode", feats[1], task, 0.0, Future(), owner),
    ]


def _ends_sooner(eng, monkeypatch, scale: float = 0.5) -> None:
    """Give the random tiny model an end-of-text logit that wins at some steps (its output
    projection's end-of-text column a scaled random vector), so windows decode to different
    lengths instead of all to the token limit. Same shapes: nothing recompiles."""
    import jax.numpy as jnp

    dec = dict(eng._state["fn"]["decoder"])
    column = np.random.default_rng(0).standard_normal(dec["proj"].shape[0]).astype(np.float32)
    dec["proj"] = dec["proj"].at[:, eng.ids.eot].set(jnp.asarray(scale * column))
    monkeypatch.setattr(eng, "_state", {"fn": {**eng._state["fn"], "decoder": dec}})


def test_continuous_batching_equals_fixed_batches(tiny_engine, speech_samples, monkeypatch):
    """Windows decoded by continuous batching, six at once in two slots (rows refilled as they
    finish, prefixes of two buckets in one batch), give the tokens, log-probabilities and
    no-speech probabilities of the same windows decoded one by one in fixed batches; a sampled
    row too (its key is folded with its own step, not the batch's)."""
    eng = tiny_engine
    assert eng.continuous
    _ends_sooner(eng, monkeypatch)
    together = [f.result(timeout=120) for f in eng._submit_all(_mixed_jobs(eng, speech_samples, 30_001))]
    monkeypatch.setattr(eng, "continuous", False)
    alone = [eng._submit(job).result(timeout=120) for job in _mixed_jobs(eng, speech_samples, 30_002)]
    assert len({len(r.tokens) for r in alone}) > 2, "windows decoded to the same lengths: nothing to refill"
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    np.testing.assert_allclose([r.avg_logprob for r in together], [r.avg_logprob for r in alone], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [r.no_speech_prob for r in together], [r.no_speech_prob for r in alone], rtol=1e-4, atol=1e-6
    )
    assert all(r.encoded is not None for r in together)  # kept for fallback and continuation decodes


def test_continuous_batching_refills_finished_rows(tiny_engine, speech_samples, monkeypatch):
    """A row that finishes early takes the next waiting window while the others decode on: the
    six windows take fewer decoder steps than in fixed batches of the same size, where each
    batch runs as long as its longest window."""
    eng = tiny_engine
    _ends_sooner(eng, monkeypatch)
    start = eng.decode_steps
    [f.result(timeout=120) for f in eng._submit_all(_mixed_jobs(eng, speech_samples, 30_003))]
    continuous = eng.decode_steps - start
    monkeypatch.setattr(eng, "continuous", False)
    start = eng.decode_steps
    [f.result(timeout=120) for f in eng._submit_all(_mixed_jobs(eng, speech_samples, 30_004))]
    fixed = eng.decode_steps - start
    assert continuous < fixed, (continuous, fixed)


# ---------------------------------------------------------------- temperature fallback
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PASS, FAIL, SILENT = -0.3, -2.0, "silent"
WORDS = {0.0: "alpha", 0.2: "bravo", 0.4: "charlie", 0.6: "delta", 0.8: "echo", 1.0: "foxtrot"}


class ScriptedDecodes:
    """Stands in for ``WhisperEngine._run_batch``: a decode row's result depends only on its
    temperature (``outcome[t]``: ``PASS``/``FAIL`` as the average log-probability, or ``SILENT``),
    its text is ``WORDS[t]`` between timestamps spanning the window, and every batch is recorded
    as ``[(temperature, reused encoder states?), …]``."""

    ENCODED = object()

    def __init__(self, engine, outcome: dict[float, object]) -> None:
        self.engine, self.outcome, self.batches = engine, outcome, []

    def __call__(self, batch):
        from jax_models.engine import WindowResult

        self.batches.append([(j.temperature, j.encoded is self.ENCODED) for j in batch])
        tsb = self.engine.ids.timestamp_begin
        out = []
        for job in batch:
            got = self.outcome[job.temperature]
            text = self.engine.tokenizer.encode(" " + WORDS[job.temperature], add_special_tokens=False)
            out.append(
                WindowResult(
                    tokens=[tsb, *text, tsb + 1500],
                    avg_logprob=-2.0 if got == SILENT else got,
                    no_speech_prob=0.9 if got == SILENT else 0.0,
                    temperature=job.temperature,
                    encoded=self.ENCODED,
                )
            )
        return out


def scripted(monkeypatch, engine, outcome) -> ScriptedDecodes:
    """Swap ``engine``'s device work for ``ScriptedDecodes`` with fixed batches of up to 8 rows
    (the scheduler's choices are what these tests check, the same with continuous batching)."""
    fake = ScriptedDecodes(engine, outcome)
    monkeypatch.setattr(engine, "continuous", False)
    monkeypatch.setattr(engine, "_run_batch", fake)
    monkeypatch.setattr(engine, "batch_buckets", (1, 2, 4, 8))
    monkeypatch.setattr(engine, "_compiled_sizes", lambda job: [1, 2, 4, 8])  # no device work: any size runs
    return fake


def sequential_stop(outcome: dict[float, object]) -> float:
    """The temperature where openai/whisper's ``decode_with_fallback`` loop ends, one temperature
    after another: the first decode that is not too repetitive / improbable (or is silence), else
    the last one."""
    for t in TEMPERATURES:
        got = outcome[t]
        logprob = -2.0 if got == SILENT else got
        needs = compression_ratio(WORDS[t]) > 2.4 or logprob < -1.0
        if got == SILENT:
            needs = False
        if not needs:
            break
    return t


def sequential_choice(outcome: dict[float, object]) -> float:
    """The decode kept: where the loop stopped on a pass; when every temperature fails, the most
    probable decode (faster-whisper ``generate_with_fallback``; ``WORDS`` all pass the compression
    ratio), the lower temperature on a tie, written out here as a loop over the outcomes."""
    stop = sequential_stop(outcome)
    got = outcome[stop]
    if got == SILENT or (isinstance(got, float) and got >= -1.0):
        return stop
    best = TEMPERATURES[0]
    for t in TEMPERATURES[1:]:
        if outcome[t] > outcome[best]:
            best = t
    return best


FALLBACK_CASES = {
    # the lowest passing temperature: neither the first fallback (0.2), nor the hottest, nor the last passing
    "lowest-pass": {0.0: FAIL, 0.2: FAIL, 0.4: PASS, 0.6: PASS, 0.8: FAIL, 1.0: PASS},
    "none-pass": dict.fromkeys(TEMPERATURES, FAIL),  # all equally improbable: the greedy decode
    # none passes: the most probable (0.8), neither the greedy nor the hottest (openai's choice)
    "none-pass-best": {0.0: -2.0, 0.2: -1.5, 0.4: -3.0, 0.6: -2.5, 0.8: -1.2, 1.0: -4.0},
    "first-pass": {0.0: FAIL, 0.2: PASS, 0.4: FAIL, 0.6: PASS, 0.8: PASS, 1.0: FAIL},
    "silence-stops": {0.0: FAIL, 0.2: FAIL, 0.4: FAIL, 0.6: SILENT, 0.8: PASS, 1.0: PASS},
}


@pytest.mark.parametrize("case", FALLBACK_CASES)
def test_fallback_decodes_every_temperature_in_one_batch(tiny_engine, speech_samples, monkeypatch, case):
    """A window that fails at T=0 is decoded at 0.2 … 1.0 as rows of ONE batch on its encoder
    states (no temperature after another), and the transcript keeps the decode openai/whisper's
    sequential loop would have kept; the fallback counters count it."""
    outcome = FALLBACK_CASES[case]
    fake = scripted(monkeypatch, tiny_engine, outcome)
    before = tiny_engine.fallback_stats()
    out = tiny_engine.transcribe(speech_samples, TranscribeOptions(language="en"))
    assert [sorted(t for t, _ in b) for b in fake.batches] == [[0.0], list(TEMPERATURES[1:])]
    assert all(reused for _, reused in fake.batches[1])  # no encoder pass for the fallback rows
    chosen = sequential_choice(outcome)
    if outcome[chosen] == SILENT:
        assert out.text == "" and out.segments == ()
    else:
        assert out.text == WORDS[chosen]
        assert [s.temperature for s in out.segments] == [chosen]
    after = tiny_engine.fallback_stats()
    for t in TEMPERATURES[1:]:
        assert after["decoded"].get(t, 0) - before["decoded"].get(t, 0) == 1
    assert after["kept"].get(chosen, 0) - before["kept"].get(chosen, 0) == 1
    assert sum(after["kept"].values()) - sum(before["kept"].values()) == 1


def test_no_fallback_when_greedy_passes_or_temperature_is_set(tiny_engine, speech_samples, monkeypatch):
    """A window that passes at T=0 is decoded once; a request's own temperature is its only one."""
    fake = scripted(monkeypatch, tiny_engine, {**dict.fromkeys(TEMPERATURES, FAIL), 0.0: PASS})
    assert tiny_engine.transcribe(speech_samples, TranscribeOptions(language="en")).text == WORDS[0.0]
    assert [[t for t, _ in b] for b in fake.batches] == [[0.0]]
    fake.batches.clear()
    out = tiny_engine.transcribe(speech_samples, TranscribeOptions(language="en", temperature=0.4))
    assert [[t for t, _ in b] for b in fake.batches] == [[0.4]] and out.text == WORDS[0.4]


def test_fallback_windows_batch_with_other_windows(tiny_engine, speech_samples, monkeypatch):
    """Two windows failing at T=0 send their fallback rows together, as many as one batch of 8
    holds: the first window's five temperatures and the second's next three, which already hold
    its lowest passing decode (0.4), so its 0.8 and 1.0 are never decoded; each window keeps its
    own lowest passing decode."""
    fake = scripted(monkeypatch, tiny_engine, FALLBACK_CASES["lowest-pass"])
    gap = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([speech_samples, gap] * 5)  # 38 s
    assert len(plan_windows(audio)) == 2
    out = tiny_engine.transcribe(audio, TranscribeOptions(language="en"))
    assert [len(b) for b in fake.batches] == [2, 8]
    assert out.text == f"{WORDS[0.4]} {WORDS[0.4]}"


@pytest.mark.parametrize("case", FALLBACK_CASES)
def test_fallback_goes_one_temperature_at_a_time_when_the_device_is_busy(
    tiny_engine, speech_samples, monkeypatch, case
):
    """When other windows already fill the next batches, a failing window queues its next
    temperature only and stops at the first that passes (openai/whisper's loop): no hot rows
    decoded for nothing; the decode kept is the same as with all temperatures at once."""
    outcome = FALLBACK_CASES[case]
    fake = scripted(monkeypatch, tiny_engine, outcome)
    monkeypatch.setattr(tiny_engine, "_queued_decode_rows", lambda: 16)  # two full batches of other requests
    before = tiny_engine.fallback_stats()
    out = tiny_engine.transcribe(speech_samples, TranscribeOptions(language="en"))
    chosen, stop = sequential_choice(outcome), sequential_stop(outcome)
    assert [[t for t, _ in b] for b in fake.batches] == [[t] for t in TEMPERATURES if t <= stop]
    assert out.text == ("" if outcome[chosen] == SILENT else WORDS[chosen])
    after = tiny_engine.fallback_stats()
    for t in TEMPERATURES[1:]:
        assert after["decoded"].get(t, 0) - before["decoded"].get(t, 0) == (t <= stop)
    assert after["kept"].get(chosen, 0) - before["kept"].get(chosen, 0) == 1


def test_fallback_equals_sequential_decodes_on_a_model(tiny_engine, speech_samples):
    """With real decodes (the random tiny model fails Whisper's thresholds), the transcript equals
    the decode the sequential rule picks among each temperature decoded alone: the sampling seed
    depends on the window and the temperature only, not on the batch."""
    from concurrent.futures import Future

    from jax_models.decoding import needs_fallback
    from jax_models.engine import _Job

    opts = TranscribeOptions(language="en", without_timestamps=True)  # one segment: no continuation
    feats = tiny_engine.log_mel([speech_samples])[0]
    prefix = tiny_engine.ids.task_tokens("en", "transcribe") + [tiny_engine.ids.no_timestamps]
    alone, ratios = [], []
    for t in TEMPERATURES:
        res = tiny_engine._submit(_Job("decode", feats, prefix, t, Future(), owner=20_001)).result()
        text = tiny_engine.tokenizer.decode([x for x in res.tokens if x < tiny_engine.ids.eot]).strip()
        alone.append(res)
        ratios.append(compression_ratio(text))
        if not needs_fallback(ratios[-1], res.avg_logprob, res.no_speech_prob):
            kept = res
            break
    else:  # every temperature failed: the most probable among those whose ratio passed (faster-whisper)
        pool = [r for r, c in zip(alone, ratios) if c <= 2.4] or alone
        kept = max(pool, key=lambda r: r.avg_logprob)
    assert len(alone) > 1, "the random model passed at T=0: this test checks nothing"
    out = tiny_engine.transcribe(speech_samples, opts)
    tokens = [t for s in out.segments for t in s.tokens]
    assert tokens == [t for t in kept.tokens if t < tiny_engine.ids.eot]
    assert {s.temperature for s in out.segments} <= {kept.temperature}


# ---------------------------------------------------------------- large-v3-shaped model
def test_large_v3_shaped_model_special_tokens(tiny_v3_engine):
    """With large-v3's 51866-token vocabulary the engine reads every control token one id above
    base's (``<|yue|>`` sits at 50358): the ids openai/whisper's tokenizer gives large-v3."""
    eng = tiny_v3_engine
    ids = eng.ids
    assert int(eng.model.config.vocab_size) == len(eng.tokenizer) == 51866
    assert int(eng.model.config.num_mel_bins) == eng.log_mel.n_mels == 128
    assert (ids.eot, ids.sot) == (50257, 50258)
    assert ids.lang_to_id["en"] == 50259 and ids.lang_to_id["su"] == 50357 and ids.lang_to_id["yue"] == 50358
    assert len(ids.lang_to_id) == 100
    assert (ids.translate, ids.transcribe, ids.sot_prev, ids.no_speech) == (50359, 50360, 50362, 50363)
    assert (ids.no_timestamps, ids.timestamp_begin) == (50364, 50365)
    assert eng.tokenizer.convert_ids_to_tokens([50358, 50365, 51865]) == ["<|yue|>", "<|0.00|>", "<|30.00|>"]
    assert ids.task_tokens("yue", "transcribe") == [50258, 50358, 50360]
    assert ids.task_tokens("fr", "translate") == [50258, 50265, 50359]
    assert not {50359, 50360, 50361, 50362, 50363} - set(ids.suppress)  # the shifted control tokens
    assert eng.tokenizer.decode(eng.tokenizer.encode(" hello world", add_special_tokens=False)) == " hello world"


def test_large_v3_shaped_model_features_and_transcripts(tiny_v3_engine, speech_samples):
    """128-bin features equal transformers' for large-v3; the engine transcribes (language given
    or detected among 100), translates, and times segments with large-v3's timestamp tokens."""
    from transformers import WhisperFeatureExtractor

    eng = tiny_v3_engine
    ours = eng.log_mel([speech_samples])[0]
    theirs = WhisperFeatureExtractor(feature_size=128)(
        speech_samples, sampling_rate=SAMPLE_RATE, return_tensors="np"
    ).input_features[0]
    assert ours.shape == theirs.shape == (128, 3000)
    assert np.abs(ours - theirs).max() < 2e-3
    duration = len(speech_samples) / SAMPLE_RATE
    for opts in (  # greedy only: the random model's windows all fail the thresholds (6 decodes each)
        TranscribeOptions(language="yue", temperature_fallback=False),
        TranscribeOptions(temperature_fallback=False),
        TranscribeOptions(task="translate", word_timestamps=True, temperature_fallback=False),
    ):
        out = eng.transcribe(speech_samples, opts)
        assert out.language in eng.ids.lang_to_id and out.duration == pytest.approx(duration, abs=0.01)
        if opts.language:
            assert out.language == opts.language
        for seg in out.segments:
            assert all(t < eng.ids.eot for t in seg.tokens)  # timestamps (≥ 50365) and controls split off
            assert 0 <= seg.start <= seg.end <= duration + 0.02
            assert seg.text == eng.tokenizer.decode(list(seg.tokens))
            assert all(0 <= w.start <= w.end <= duration + 0.02 for w in seg.words)
        if opts.word_timestamps:
            assert any(seg.words for seg in out.segments)


# ---------------------------------------------------------------- the functional backend (no EasyDeL, no transformers)
def test_tokenizer_without_transformers_matches_transformers(tiny_whisper_dir, tiny_v3_dir):
    """``decoding.WhisperTokenizer`` (the ``tokenizers`` library alone) encodes and decodes as
    transformers' Whisper tokenizer: text, multi-byte characters cut mid-way, special and
    timestamp tokens, base's and large-v3's vocabularies."""
    from transformers import AutoTokenizer

    from jax_models.decoding import WhisperTokenizer

    rng = np.random.default_rng(0)
    texts = [
        " hello world",
        " Hello, world! It's 3.14 o'clock.",
        "  two  spaces",
        " 日本語のテキスト",
        " ¿Qué tal?",
        " naïve café",
        " don't , stop .",
        "",
    ]
    for path in (tiny_whisper_dir, tiny_v3_dir):
        ours, theirs = WhisperTokenizer(path), AutoTokenizer.from_pretrained(path)
        assert len(ours) == len(theirs) and ours.pad_token_id == theirs.pad_token_id
        for text in texts:
            ids = theirs.encode(text, add_special_tokens=False)
            assert ours.encode(text) == ids
            assert ours.decode(ids) == theirs.decode(ids)
            assert ours.decode(ids[:-1]) == theirs.decode(ids[:-1])  # may end inside a character
        eot = theirs.convert_tokens_to_ids("<|endoftext|>")
        sequences = [rng.integers(0, eot, size=n).tolist() for n in (1, 5, 40)]
        sequences += [
            rng.integers(eot, len(theirs), size=6).tolist(),  # special and timestamp tokens
            [eot + 1, eot + 2, 400, len(theirs) - 1, 401, eot],
        ]
        for ids in sequences:
            assert ours.decode(ids) == theirs.decode(ids), ids
        for tok in ("<|startoftranscript|>", "<|notimestamps|>", "<|0.00|>", "<|nocaptions|>", "hello"):
            assert ours.convert_tokens_to_ids(tok) == theirs.convert_tokens_to_ids(tok)
        assert ours.convert_ids_to_tokens([eot, eot + 1, 400]) == theirs.convert_ids_to_tokens([eot, eot + 1, 400])


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_without_transformers_match_transformers(n_mels):
    from transformers import WhisperFeatureExtractor

    from jax_models.engine import slaney_mel_filters

    theirs = np.asarray(WhisperFeatureExtractor(feature_size=n_mels).mel_filters, np.float32).T
    ours = slaney_mel_filters(n_mels)
    assert ours.shape == theirs.shape == (n_mels, 201)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def tiny_v3_easydel(tiny_v3_dir):
    """``tiny_v3_engine``'s model loaded through EasyDeL (the reference for the functional backend)."""
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(tiny_v3_dir), batch_size=2, max_new_tokens=16, backend="easydel")
    yield engine
    engine.close()


def test_functional_alignment_weights_equal_transformers_and_easydel(tiny_v3_engine, tiny_v3_easydel):
    """The functional backend's cross-attention of the alignment heads (layers 2 and 3 of a
    4-layer decoder, generation config ``[[2, 0], [3, 1]]``) equals transformers' PyTorch Whisper
    (``output_attentions``, the reference) to float32 rounding, and EasyDeL's within 1 %: EasyDeL
    0.3.0's decoder itself is 0.3 % off the reference on this random model."""
    import jax.numpy as jnp
    import torch
    from transformers import WhisperForConditionalGeneration

    fn_engine, ed_engine = tiny_v3_engine, tiny_v3_easydel
    assert (fn_engine.backend, ed_engine.backend) == ("functional", "easydel")
    assert fn_engine.alignment_heads == ed_engine.alignment_heads == [(2, 0), (3, 1)]
    hf = WhisperForConditionalGeneration.from_pretrained(fn_engine.model_path, attn_implementation="eager").eval()
    rng = np.random.default_rng(1)
    mel = fn_engine.log_mel([rng.standard_normal(16000 * 4).astype(np.float32) * 0.1, np.zeros(1600, np.float32)])
    with torch.no_grad():
        ref_enc = hf.model.encoder(torch.tensor(mel)).last_hidden_state
    enc = jnp.asarray(ref_enc.numpy())
    tokens = np.full((2, 232), fn_engine.ids.eot, np.int32)
    prefix = fn_engine.ids.task_tokens("en", "transcribe") + [fn_engine.ids.no_timestamps]
    for row, text in enumerate(([400, 401, 402, 1000, 5000], list(range(300, 500)))):
        seq = prefix + text + [fn_engine.ids.eot]
        tokens[row, : len(seq)] = seq
    ours = np.asarray(fn_engine._align(fn_engine._state, enc, jnp.asarray(tokens)))
    easydel = np.asarray(ed_engine._align(ed_engine._state, enc, jnp.asarray(tokens)))
    with torch.no_grad():
        cross = hf(
            encoder_outputs=(ref_enc,), decoder_input_ids=torch.tensor(tokens, dtype=torch.long), output_attentions=True
        ).cross_attentions
    reference = np.stack([cross[layer][:, head].numpy() for layer, head in fn_engine.alignment_heads], axis=1)
    assert ours.shape == easydel.shape == reference.shape == (2, 2, 232, 1500)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(ours, easydel, rtol=1e-2, atol=1e-8)


def test_functional_word_timestamps_equal_easydel(tiny_v3_engine, tiny_v3_easydel, speech_samples):
    """Whole requests: the same text, segments (times and tokens) and words from both backends, with
    word timestamps and without timestamps (what bench/gpu/run.sh relies on: the GPU bench runs the
    EasyDeL-free functional backend). Greedy only: the random model's windows fail Whisper's
    thresholds, and six decodes per window would compare the same code six times."""
    opts = TranscribeOptions(language="en", word_timestamps=True, temperature_fallback=False)
    ours, theirs = tiny_v3_engine.transcribe(speech_samples, opts), tiny_v3_easydel.transcribe(speech_samples, opts)
    assert ours.text == theirs.text and ours.words, "no words: this test checks nothing"
    assert [(s.start, s.end, s.tokens) for s in ours.segments] == [(s.start, s.end, s.tokens) for s in theirs.segments]
    assert [w.word for w in ours.words] == [w.word for w in theirs.words]
    for a, b in zip(ours.words, theirs.words):  # one 20 ms frame (times are rounded to ms)
        assert abs(a.start - b.start) <= 0.021 and abs(a.end - b.end) <= 0.021, (a, b)
    opts = TranscribeOptions(language="en", without_timestamps=True, temperature_fallback=False)
    ours, theirs = tiny_v3_engine.transcribe(speech_samples, opts), tiny_v3_easydel.transcribe(speech_samples, opts)
    assert ours.text == theirs.text and ours.text
    assert [(s.start, s.end, s.tokens) for s in ours.segments] == [(s.start, s.end, s.tokens) for s in theirs.segments]


def test_word_timestamps_when_no_window_has_text(tiny_engine, monkeypatch):
    """Noise that Whisper writes nothing for, with word timestamps (the router's diarized requests):
    no window to align, an empty transcript, not a crash in the feature extractor (white noise gave a
    500 through the router before)."""
    monkeypatch.setattr(tiny_engine, "_raw_segments", lambda window, result: [])
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    t = tiny_engine.transcribe(noise, TranscribeOptions(language="en", word_timestamps=True))
    assert tuple(t.segments) == () and t.text == ""
