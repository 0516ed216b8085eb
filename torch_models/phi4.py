"""Phi-4-multimodal audio tasks with transformers' native ``Phi4MultimodalForCausalLM``.

Model card: https://huggingface.co/microsoft/Phi-4-multimodal-instruct (5.6 B parameters; a
Phi-4-mini language model with a conformer audio encoder, a SigLIP vision encoder, and a speech
LoRA adapter in ``speech-lora/`` that the audio tasks need).

transformers' ``Phi4MultimodalProcessor`` needs the image processor, which needs torchvision; on a
CPU-only machine the registry only offers a CUDA build. ``AudioProcessor`` is the audio half of it:
the ``Phi4MultimodalFeatureExtractor`` (80 log-mel bands, 10 ms hop) and the tokenizer, expanding
each ``<|audio|>`` to one placeholder per audio embedding (8× compression: 12.5 per second).

``Phi4Manager`` loads the model on first use (never at start-up unless asked), counts users, and
unloads it after an idle TTL, as speaches does for its model handles.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.core.audio import SAMPLE_RATE
from torch_models.prompts import AUDIO_PLACEHOLDER

log = logging.getLogger("chorus.sidecar.phi4")

RETRY_LOAD_AFTER_S = 60.0  # a failed load is reported without retrying for this long


class Phi4NotConfiguredError(RuntimeError):
    """No Phi-4 model is configured (``--phi4-model`` / ``CHORUS_SIDECAR_PHI4_MODEL``)."""


class Phi4LoadError(RuntimeError):
    """The configured Phi-4 weights could not be loaded; the message names the setting."""


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling for one request: greedy when ``temperature`` is 0."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0

    def to_generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


@dataclass(frozen=True)
class Generation:
    """A decoded answer: ``finish_reason`` is ``"stop"`` (end token) or ``"length"`` (budget spent)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float


class AudioProcessor:
    """Feature extractor + tokenizer: prompt text and 16 kHz clips → model inputs.

    Args:
        feature_extractor: a ``Phi4MultimodalFeatureExtractor``.
        tokenizer: the model's tokenizer (``<|audio|>`` must be one token).

    Raises:
        ValueError: ``<|audio|>`` is not a single token of the tokenizer.
    """

    def __init__(self, feature_extractor: Any, tokenizer: Any) -> None:
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.audio_token = getattr(tokenizer, "audio_token", None) or AUDIO_PLACEHOLDER
        token_id = tokenizer.convert_tokens_to_ids(self.audio_token)
        if token_id is None or (token_id == tokenizer.unk_token_id and tokenizer.unk_token != self.audio_token):
            raise ValueError(f"the tokenizer has no {self.audio_token} token")
        self.audio_token_id = int(token_id)

    @classmethod
    def from_pretrained(cls, source: str, **kwargs: Any) -> AudioProcessor:
        """Load both halves from a hub id or directory.

        The feature extractor's settings come from ``preprocessor_config.json`` when present, else
        from the ``audio_processor`` entry of ``processor_config.json``, else its defaults (which
        match the released model).
        """
        from transformers import AutoTokenizer, Phi4MultimodalFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        try:
            fe = Phi4MultimodalFeatureExtractor.from_pretrained(source, **kwargs)
        except (OSError, ValueError, TypeError):
            fe = None
            path = Path(source) / "processor_config.json"
            if path.is_file():
                cfg = json.loads(path.read_text()).get("audio_processor") or {}
                cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "feature_extractor_type"}
                fe = Phi4MultimodalFeatureExtractor(**cfg)
            fe = fe or Phi4MultimodalFeatureExtractor()
        return cls(fe, tokenizer)

    def __call__(self, prompt: str, audios: Sequence[np.ndarray]) -> dict[str, Any]:
        """Tokenise ``prompt`` (with one ``<|audio|>`` per clip) and featurise the clips.

        Args:
            prompt: text with ``len(audios)`` ``<|audio|>`` placeholders.
            audios: float32 ``(n,)`` clips at 16 kHz.

        Returns:
            ``input_ids``/``attention_mask`` int64 ``(1, L)`` and, with audio,
            ``audio_input_features`` float32 ``(B, frames, 80)``, ``audio_embed_sizes`` int64 ``(B,)``
            (and ``audio_attention_mask`` bool ``(B, frames)`` for several clips).

        Raises:
            ValueError: the placeholder count differs from the number of clips, or an empty clip.
        """
        count = prompt.count(self.audio_token)
        if count != len(audios):
            raise ValueError(f"the prompt has {count} {self.audio_token} placeholders for {len(audios)} audio clips")
        inputs: dict[str, Any] = {}
        if audios:
            if any(np.asarray(a).size < self.feature_extractor.win_length for a in audios):
                raise ValueError("an audio clip is too short (under 25 ms)")
            feats = self.feature_extractor(
                [np.asarray(a, dtype=np.float32) for a in audios],
                sampling_rate=SAMPLE_RATE,
                return_tensors="pt",
            )
            inputs.update(feats)
            sizes = iter(int(n) for n in feats["audio_embed_sizes"])
            pieces = prompt.split(self.audio_token)
            prompt = pieces[0] + "".join(self.audio_token * next(sizes) + p for p in pieces[1:])
        text = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        inputs["input_ids"] = text["input_ids"]
        inputs["attention_mask"] = text["attention_mask"]
        return inputs

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids → text without special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


class Phi4Model:
    """A loaded model with its processor. ``generate`` is serialised by a lock (one KV cache)."""

    def __init__(self, model: Any, processor: AudioProcessor, name: str, adapter: str | None) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.adapter = adapter
        self.context_length = int(getattr(model.config, "max_position_embeddings", 131072))
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else model.config.eos_token_id
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        end_id = processor.tokenizer.convert_tokens_to_ids("<|end|>")
        if isinstance(end_id, int) and end_id != processor.tokenizer.unk_token_id:
            self.eos_ids.add(end_id)
        self._lock = threading.Lock()

    def generate(self, prompt: str, audios: Sequence[np.ndarray], options: GenerationOptions) -> Generation:
        """Run ``model.generate`` on one prompt; blocking (call it from a worker thread).

        Raises:
            ValueError: placeholder/clip mismatch, or the prompt does not fit the context.
        """
        import torch

        inputs = self.processor(prompt, audios)
        n_prompt = int(inputs["input_ids"].shape[1])
        room = self.context_length - n_prompt
        if room < 1:
            raise ValueError(
                f"the prompt ({n_prompt} tokens with audio) does not fit the {self.context_length}-token context"
            )
        options = GenerationOptions(min(options.max_new_tokens, room), options.temperature, options.top_p)
        device = self.model.device
        dtype = self.model.dtype
        inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                **inputs,
                **options.to_generate_kwargs(),
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
        new = out[0, n_prompt:].tolist()
        finish = "stop" if new and new[-1] in self.eos_ids else "length"
        if not new:
            finish = "stop"
        return Generation(self.processor.decode(new), n_prompt, len(new), finish, time.perf_counter() - t0)


def load_phi4(
    source: str,
    *,
    adapter: str | None = "speech-lora",
    dtype: str = "float32",
    device: str = "cpu",
    drop_vision: bool = True,
    revision: str | None = None,
) -> Phi4Model:
    """Load ``Phi4MultimodalForCausalLM`` + ``AudioProcessor`` (+ the speech LoRA adapter with peft).

    Args:
        source: hub id or local directory of a native-transformers checkpoint.
        adapter: subfolder of ``source`` holding the speech LoRA (``speech-lora``), or a path/hub id
            of an adapter; None or "" loads none.
        dtype: "float32" (CPU: ~19 GiB for the full model), "bfloat16" or "float16" (GPU).
        device: torch device.
        drop_vision: free the SigLIP image encoder (audio tasks never use it).
        revision: hub revision (branch, tag, commit or ``refs/pr/N``) of a hub ``source``.

    Raises:
        Phi4LoadError: anything failing on the way, with the setting to change.
    """
    import torch
    from transformers import Phi4MultimodalForCausalLM

    t0 = time.perf_counter()
    hub = {"revision": revision} if revision else {}
    try:
        processor = AudioProcessor.from_pretrained(source, **hub)
        model = Phi4MultimodalForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **hub)
        if processor.audio_token_id != model.config.audio_config.audio_token_id:
            raise ValueError(
                f"tokenizer id of {processor.audio_token} ({processor.audio_token_id}) differs from the model's "
                f"audio_token_id ({model.config.audio_config.audio_token_id})"
            )
        if adapter:
            local = Path(source) / adapter
            if local.is_dir():
                model.load_adapter(str(local), adapter_name="speech")
            elif Path(adapter).is_dir():
                model.load_adapter(adapter, adapter_name="speech")
            else:
                model.load_adapter(source, adapter_name="speech", adapter_kwargs={"subfolder": adapter, **hub})
            model.set_adapter("speech")
        if drop_vision:
            embed = model.model.embed_tokens_extend
            if getattr(embed, "image_embed", None) is not None:
                embed.image_embed = None
                gc.collect()
        model = model.to(torch.device(device)).eval()
    except Exception as exc:
        raise Phi4LoadError(
            f"could not load Phi-4-multimodal from {source!r} (adapter {adapter!r}): {type(exc).__name__}: {exc}. "
            "Set --phi4-model / CHORUS_SIDECAR_PHI4_MODEL to a reachable hub id or a local directory "
            "(and --phi4-adapter to its speech LoRA subfolder, or '' for none)."
        ) from exc
    log.info(
        "loaded Phi-4-multimodal from %s (%s, adapter=%s) in %.1f s", source, dtype, adapter, time.perf_counter() - t0
    )
    return Phi4Model(model, processor, source, adapter or None)


class Phi4Manager:
    """Loads Phi-4 on first use, counts users, unloads after ``idle_ttl_s`` without any.

    Args:
        source: ``--phi4-model``; None means not configured.
        loader: ``source → Phi4Model`` (``load_phi4`` with the settings bound).
        idle_ttl_s: unload after this long unused (0: keep forever).
        clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self,
        source: str | None,
        loader: Callable[[str], Phi4Model],
        *,
        idle_ttl_s: float = 600.0,
        max_concurrent: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.loader = loader
        self.idle_ttl_s = idle_ttl_s
        self.clock = clock
        self.handle: Phi4Model | None = None
        self.users = 0
        self.last_used = clock()
        self.loads = 0
        self._load_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._failed: tuple[float, str] | None = None

    @property
    def configured(self) -> bool:
        """Whether a Phi-4 source is set."""
        return bool(self.source)

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory now."""
        return self.handle is not None

    def status(self) -> str:
        """``"not configured"``, ``"loaded"``, ``"not loaded (loads on first use)"`` or the last load error."""
        if not self.configured:
            return "not configured"
        if self.handle is not None:
            return "loaded"
        if self._failed:
            return f"load failed: {self._failed[1]}"
        return "not loaded (loads on first use)"

    async def ensure_loaded(self) -> Phi4Model:
        """Load in a worker thread unless loaded.

        Raises:
            Phi4NotConfiguredError: no source configured.
            Phi4LoadError: loading failed now or less than a minute ago.
        """
        import anyio

        if not self.configured:
            raise Phi4NotConfiguredError(
                "Phi-4-multimodal is not configured on this sidecar: start it with --phi4-model "
                "microsoft/Phi-4-multimodal-instruct (or a local directory), or set CHORUS_SIDECAR_PHI4_MODEL."
            )
        async with self._load_lock:
            if self.handle is None:
                if self._failed and self.clock() - self._failed[0] < RETRY_LOAD_AFTER_S:
                    raise Phi4LoadError(self._failed[1])
                try:
                    self.handle = await anyio.to_thread.run_sync(self.loader, self.source)
                except Exception as exc:
                    message = str(exc) if isinstance(exc, Phi4LoadError) else f"{type(exc).__name__}: {exc}"
                    self._failed = (self.clock(), message)
                    raise Phi4LoadError(message) from exc
                self._failed = None
                self.loads += 1
            return self.handle

    @asynccontextmanager
    async def use(self):
        """``async with manager.use() as phi:`` — a loaded ``Phi4Model``, held until the block ends."""
        self.users += 1
        try:
            handle = await self.ensure_loaded()
            async with self._slots:
                yield handle
        finally:
            self.users -= 1
            self.last_used = self.clock()

    def maybe_unload(self) -> bool:
        """Unload when loaded, unused and idle for ``idle_ttl_s``; True if it unloaded."""
        if self.handle is None or self.users > 0 or self.idle_ttl_s <= 0:
            return False
        if self.clock() - self.last_used < self.idle_ttl_s:
            return False
        self.unload()
        return True

    def unload(self) -> None:
        """Drop the model and free its memory."""
        self.handle = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
        log.info("unloaded Phi-4-multimodal (idle)")

    async def reaper(self, period_s: float | None = None) -> None:
        """Background task: check for idleness every ``period_s`` (default: TTL/10, 1–60 s)."""
        period = period_s or min(60.0, max(1.0, self.idle_ttl_s / 10))
        while True:
            await asyncio.sleep(period)
            self.maybe_unload()
