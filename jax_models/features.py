"""Log-mel features for Whisper, as in openai/whisper ``audio.log_mel_spectrogram``.

Computed with ``torch.stft`` on the CPU (torch is already a dependency of EasyDeL); a
batch of 30 s windows costs a few milliseconds, far less than the encoder.
"""

from __future__ import annotations

import numpy as np
import torch

from server.core.audio import HOP_LENGTH, N_SAMPLES

N_FFT = 400  # samples per STFT frame (25 ms at 16 kHz)


class LogMel:
    """Turns 16 kHz windows into Whisper's normalised log-mel spectrogram.

    Args:
        mel_filters: ``(n_mels, 1 + N_FFT // 2)`` float32 filterbank, e.g. the Hugging Face
            ``WhisperFeatureExtractor.mel_filters`` transposed (Slaney-style, as Whisper uses).
    """

    def __init__(self, mel_filters: np.ndarray) -> None:
        self.filters = torch.from_numpy(np.ascontiguousarray(mel_filters, dtype=np.float32))
        self.window = torch.hann_window(N_FFT)
        self.n_mels = self.filters.shape[0]

    @torch.inference_mode()
    def __call__(self, windows: list[np.ndarray]) -> np.ndarray:
        """Compute features for a batch of windows.

        Args:
            windows: each a float32 ``(n,)`` array of 16 kHz samples with ``n <= N_SAMPLES``
                (shorter windows are zero-padded to 30 s, as Whisper expects).

        Returns:
            float32 ``(len(windows), n_mels, 3000)``.
        """
        batch = np.zeros((len(windows), N_SAMPLES), dtype=np.float32)
        for i, w in enumerate(windows):
            batch[i, : min(len(w), N_SAMPLES)] = w[:N_SAMPLES]
        audio = torch.from_numpy(batch)
        stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        magnitudes = stft[..., :-1].abs() ** 2
        mel = self.filters @ magnitudes
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return ((log_spec + 4.0) / 4.0).numpy()
