"""The torch sidecar: speaker diarization (Sortformer or an offline clustering backend), speaker
fingerprints (TitaNet or resemblyzer) and Phi-4-multimodal audio tasks, served by ``sidecar_app``.

Heavy libraries (NeMo, transformers, silero-vad, resemblyzer) are imported lazily by the module
that needs them, so importing this package is cheap.
"""
