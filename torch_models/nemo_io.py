"""Loading NeMo models: by hub id (``from_pretrained``) or local ``.nemo`` file (``restore_from``),
and building randomly initialised ones from the architecture configs in ``torch_models/configs``.

``import nemo.collections.asr`` takes 11–21 s on a 2-core CPU, so it happens once, in
``import_nemo_asr``, called at sidecar start-up only when a NeMo backend is chosen.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("chorus.sidecar.nemo")

CONFIG_DIR = Path(__file__).with_name("configs")
ARCHITECTURES = {
    "sortformer": "sortformer_4spk-v1.yaml",
    "sortformer_streaming": "sortformer_streaming_4spk-v2.yaml",
    "titanet": "titanet-large.yaml",
}
Kind = Literal["sortformer", "sortformer_streaming", "titanet"]

_import_lock = threading.Lock()


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the setting that chose it."""


def import_nemo_asr() -> Any:
    """Import ``nemo.collections.asr`` once (11–21 s) and quiet NeMo's info logging.

    Raises:
        ModelLoadError: nemo_toolkit[asr] is not installed.
    """
    with _import_lock:
        t0 = time.perf_counter()
        try:
            import nemo.collections.asr as nemo_asr
            from nemo.utils import logging as nemo_logging
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ModelLoadError(
                f"nemo_toolkit[asr] is not installed ({exc}); install the 'sidecar' extra or use --diarizer cluster."
            ) from exc
        nemo_logging.setLevel(logging.WARNING)
        dt = time.perf_counter() - t0
        if dt > 0.5:
            log.info("imported nemo.collections.asr in %.1f s", dt)
        return nemo_asr


def is_local(source: str) -> bool:
    """True for a path to an existing file or a name ending in ``.nemo``."""
    return source.endswith(".nemo") or Path(source).expanduser().is_file()


def load_nemo_model(cls: Any, source: str, *, device: str = "cpu", setting: str = "model") -> Any:
    """Load a NeMo model class from a hub id or a local ``.nemo`` file, in eval mode on ``device``.

    ``from_pretrained`` rejects local paths, so ``.nemo`` files go through ``restore_from``.

    Raises:
        ModelLoadError: missing file, unreachable hub, or a checkpoint of another class; the
            message names ``setting`` (e.g. ``--sortformer-model``).
    """
    import torch

    map_location = torch.device(device)
    t0 = time.perf_counter()
    try:
        if is_local(source):
            path = Path(source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            model = cls.restore_from(str(path), map_location=map_location)
        else:
            model = cls.from_pretrained(source, map_location=map_location)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {cls.__name__} from {source!r} (set {setting} to a reachable hub id or a local "
            f".nemo file): {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    log.info("loaded %s from %s in %.1f s", cls.__name__, source, time.perf_counter() - t0)
    return model


def architecture_config(kind: Kind, *, tiny: bool = False, overrides: dict | None = None) -> Any:
    """The OmegaConf model config of an architecture (full size, or reduced with ``tiny=True``)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG_DIR / ARCHITECTURES[kind])
    if tiny:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(CONFIG_DIR / "tiny.yaml")[kind])
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    return cfg


def build_random_model(kind: Kind, *, tiny: bool = False, seed: int = 0, overrides: dict | None = None) -> Any:
    """A randomly initialised ``SortformerEncLabelModel`` or ``EncDecSpeakerLabelModel``.

    Used by the tests (``tiny=True``: a few hundred thousand parameters) and to time the full
    architectures without downloading weights. Imports NeMo.
    """
    import torch

    import_nemo_asr()
    from nemo.collections.asr.models import EncDecSpeakerLabelModel, SortformerEncLabelModel

    torch.manual_seed(seed)
    cls = EncDecSpeakerLabelModel if kind == "titanet" else SortformerEncLabelModel
    model = cls(cfg=architecture_config(kind, tiny=tiny, overrides=overrides))
    return model.eval()
