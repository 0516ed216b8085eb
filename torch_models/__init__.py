"""The torch sidecar: speaker diarization (pyannote-style segmentation-3.0 + CAM++ offline, or
Sortformer), speaker fingerprints (CAM++ or TitaNet) and Phi-4-multimodal audio tasks, served by
``sidecar_app``.

Heavy libraries (NeMo, transformers, asteroid-filterbanks) are imported lazily by the module that
needs them, so importing this package is cheap.
"""
