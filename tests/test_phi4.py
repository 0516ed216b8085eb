"""Phi-4-multimodal: prompt templates, token budgets, the diarize parser, a tiny native model
loaded through the real ``from_pretrained`` + peft adapter path, the model manager, and the
``prompts run`` command."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from click.testing import CliRunner

from server.core.audio import SAMPLE_RATE, to_wav_bytes
from tests.sidecar_fixtures import build_tiny_phi4, tone
from torch_models import prompts as P
from torch_models.phi4 import (
    AudioProcessor,
    GenerationOptions,
    Phi4LoadError,
    Phi4Manager,
    Phi4NotConfiguredError,
    load_phi4,
)

# --- templates, budgets, parser ---------------------------------------------------------------------


def test_every_task_renders_its_templates():
    assert set(P.TASKS) == {"transcribe", "diarize", "translate", "summarize", "describe", "continue", "qa"}
    assert len(P.TASKS["diarize"].templates) >= 3
    for task in P.TASKS.values():
        for name in task.templates:
            text = task.render(name, language="French", question="Who is speaking?")
            assert text and "{" not in text
    assert P.get_task("translate").render(language="German") == "Translate the audio to German."
    with pytest.raises(ValueError, match="language"):
        P.get_task("translate").render()
    with pytest.raises(ValueError, match="question"):
        P.get_task("qa").render()
    with pytest.raises(KeyError, match="no template"):
        P.get_task("diarize").render("nope")
    with pytest.raises(KeyError, match="unknown task"):
        P.get_task("sing")


def test_user_prompt_uses_native_audio_placeholder():
    prompt = P.user_prompt("Transcribe the audio clip into text.", system="Be brief.")
    assert prompt == (
        "<|system|>Be brief.<|end|><|user|><|audio|>Transcribe the audio clip into text.<|end|><|assistant|>"
    )
    assert "<|audio_1|>" not in prompt


def test_max_new_tokens_grows_with_duration_and_respects_caps():
    t = P.get_task("transcribe")
    short, long = P.max_new_tokens(t, 10, cap=10_000), P.max_new_tokens(t, 60, cap=10_000)
    assert short < long and long == int(32 + 60 * 3.0 * 1.4 * 1.5)
    assert P.max_new_tokens(P.get_task("diarize"), 60, cap=10_000) > long
    assert P.max_new_tokens(t, 3600, cap=2048) == 2048
    assert P.max_new_tokens(t, 60, cap=2048, context_left=100) == 100
    assert P.max_new_tokens(P.get_task("summarize"), 3600, cap=2048) == 512
    assert P.get_task("transcribe").temperature == 0.0 and P.get_task("continue").temperature > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[0.0 - 2.5] Speaker 1: Hello there.\n[2.5 - 4.0] Speaker 2: Hi!",
            [(0.0, 2.5, "Speaker 1", "Hello there."), (2.5, 4.0, "Speaker 2", "Hi!")],
        ),
        ("Speakers: 2\n(00:01.5 – 00:03) speaker_2: yes\n", [(1.5, 3.0, "Speaker 2", "yes")]),
        (
            "Speaker A: first\nSpeaker B: second",
            [(None, None, "Speaker A", "first"), (None, None, "Speaker B", "second")],
        ),
        ('Sure: [{"start": 0, "end": 1.2, "speaker": "Speaker 1", "text": "hey"}]', [(0.0, 1.2, "Speaker 1", "hey")]),
        ("[3.0 - 1.0] Alice: swapped", [(1.0, 3.0, "Alice", "swapped")]),
    ],
)
def test_parse_diarized_text(text, expected):
    segs = P.parse_diarized_text(text)
    assert [(s["start"], s["end"], s["speaker"], s["text"]) for s in segs] == expected


def test_parse_diarized_text_gives_none_for_free_text():
    assert P.parse_diarized_text("The audio contains a short conversation about budgets.") is None
    assert P.parse_diarized_text("") is None


def test_generation_options():
    assert GenerationOptions(10).to_generate_kwargs() == {"max_new_tokens": 10, "do_sample": False}
    kw = GenerationOptions(10, temperature=0.7, top_p=0.9).to_generate_kwargs()
    assert kw["do_sample"] and kw["temperature"] == 0.7 and kw["top_p"] == 0.9


# --- the tiny native model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phi_dir(tmp_path_factory):
    return build_tiny_phi4(tmp_path_factory.mktemp("phi4") / "tiny")


@pytest.fixture(scope="module")
def phi(phi_dir):
    return load_phi4(str(phi_dir), adapter="speech-lora")


def test_audio_processor_expands_placeholders(phi_dir):
    proc = AudioProcessor.from_pretrained(str(phi_dir))
    audio = tone(13.0)
    inputs = proc(P.user_prompt("Transcribe the audio clip into text."), [audio])
    n_audio = int(inputs["audio_embed_sizes"][0])
    assert 150 <= n_audio <= 170  # 13 s at 12.5 embeddings per second
    assert int((inputs["input_ids"] == proc.audio_token_id).sum()) == n_audio
    assert inputs["audio_input_features"].shape[-1] == 80
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape
    two = proc("<|user|><|audio|> and <|audio|><|end|><|assistant|>", [tone(2.0), tone(3.0)])
    assert two["audio_input_features"].shape[0] == 2 and "audio_attention_mask" in two
    with pytest.raises(ValueError, match="placeholders"):
        proc(P.user_prompt("x"), [])
    with pytest.raises(ValueError, match="too short"):
        proc(P.user_prompt("x"), [np.zeros(10, np.float32)])


def test_load_phi4_with_speech_adapter_and_generate(phi):
    model = phi.model
    assert type(model).__name__ == "Phi4MultimodalForCausalLM"
    assert "speech" in model.peft_config and model.active_adapters() == ["speech"]
    assert model.model.embed_tokens_extend.image_embed is None  # vision encoder dropped
    gen = phi.generate(P.user_prompt("Transcribe the audio clip into text."), [tone(4.0)], GenerationOptions(12))
    assert isinstance(gen.text, str)
    assert 1 <= gen.completion_tokens <= 12 and gen.prompt_tokens > 50
    assert gen.finish_reason in {"stop", "length"}
    assert gen.finish_reason == "stop" or gen.completion_tokens == 12
    again = phi.generate(P.user_prompt("Transcribe the audio clip into text."), [tone(4.0)], GenerationOptions(12))
    assert again.text == gen.text  # greedy is deterministic


def test_adapter_changes_the_output(phi_dir, phi):
    plain = load_phi4(str(phi_dir), adapter=None)
    assert not getattr(plain.model, "_hf_peft_config_loaded", False)
    inputs = phi.processor(P.user_prompt("Describe."), [tone(2.0)])
    import torch

    with torch.inference_mode():
        a = phi.model(**inputs).logits
        b = plain.model(**inputs).logits
    assert not torch.allclose(a, b)


def test_load_errors_name_the_setting(tmp_path):
    with pytest.raises(Phi4LoadError, match="--phi4-model"):
        load_phi4(str(tmp_path / "nowhere"))


# --- the manager -------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_manager_loads_once_counts_users_and_unloads_when_idle():
    clock = FakeClock()
    loads = []

    def loader(source):
        loads.append(source)
        return object()

    manager = Phi4Manager("some/model", loader, idle_ttl_s=60, max_concurrent=2, clock=clock)
    assert manager.status() == "not loaded (loads on first use)"

    async def scenario():
        async with manager.use() as a:
            assert manager.users == 1
            async with manager.use() as b:
                assert a is b and manager.users == 2
            clock.t += 120
            assert not manager.maybe_unload()  # still in use
        assert manager.users == 0 and manager.loaded
        clock.t += 30
        assert not manager.maybe_unload()  # idle for 30 s < 60 s
        clock.t += 31
        assert manager.maybe_unload() and not manager.loaded
        async with manager.use():
            pass

    asyncio.run(scenario())
    assert loads == ["some/model", "some/model"] and manager.loads == 2


def test_manager_not_configured_and_failed_loads():
    async def use(manager):
        async with manager.use():
            pass

    with pytest.raises(Phi4NotConfiguredError, match="--phi4-model"):
        asyncio.run(use(Phi4Manager(None, lambda s: object())))
    calls = []

    def broken(source):
        calls.append(source)
        raise Phi4LoadError("weights unreachable: set --phi4-model")

    clock = FakeClock()
    manager = Phi4Manager("x", broken, clock=clock)
    for _ in range(2):
        with pytest.raises(Phi4LoadError, match="unreachable"):
            asyncio.run(use(manager))
    assert len(calls) == 1  # the failure is remembered for a minute
    assert manager.status().startswith("load failed") and manager.users == 0
    clock.t += 61
    with pytest.raises(Phi4LoadError):
        asyncio.run(use(manager))
    assert len(calls) == 2


# --- chorus prompts run ----------------------------------------------------------------------------


def test_prompts_run_writes_one_file_per_audio(phi_dir, tmp_path):
    from torch_models.cli import prompts

    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    (audio_dir / "a.wav").write_bytes(to_wav_bytes(tone(2.0)))
    (audio_dir / "b.wav").write_bytes(to_wav_bytes(tone(1.5, 300)))
    (audio_dir / "broken.wav").write_bytes(b"not audio")
    (audio_dir / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        prompts,
        [
            "run",
            str(audio_dir),
            "--task",
            "diarize",
            "--templates",
            "all",
            "--out",
            str(out),
            "--model",
            str(phi_dir),
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "broken.json"]
    record = json.loads((out / "a.json").read_text())
    assert record["task"] == "diarize" and record["duration"] == pytest.approx(2.0)
    assert [r["template"] for r in record["results"]] == list(P.TASKS["diarize"].templates)
    for r in record["results"]:
        assert set(r) >= {"template", "instruction", "text", "segments", "output_tokens", "seconds"}
        assert r["output_tokens"] <= 4
    assert "error" in json.loads((out / "broken.json").read_text())


def test_prompts_run_usage_errors(phi_dir, tmp_path):
    from torch_models.cli import prompts

    runner = CliRunner()
    res = runner.invoke(
        prompts, ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--model", str(phi_dir), "--templates", "bogus"]
    )
    assert res.exit_code != 0 and "bogus" in res.output
    res = runner.invoke(
        prompts, ["run", str(tmp_path), "--task", "translate", "--out", str(tmp_path / "o"), "--model", str(phi_dir)]
    )
    assert res.exit_code != 0 and "--language" in res.output
    res = runner.invoke(prompts, ["list"])
    assert res.exit_code == 0 and "timestamps" in res.output
    assert SAMPLE_RATE == 16000
