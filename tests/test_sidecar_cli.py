"""``chorus serve sidecar`` flags → settings → app, and the sidecar's settings."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from torch_models.settings import SidecarSettings


def test_settings_defaults_and_env(monkeypatch):
    s = SidecarSettings()
    assert s.port == 8002 and s.diarizer == "pyannote" and s.phi4_model is None
    assert s.max_window_s == 300.0 and s.segmentation_step_s == 1.0
    assert s.sortformer_model == "nvidia/diar_sortformer_4spk-v1"
    assert s.titanet_model == "nvidia/speakerverification_en_titanet_large"
    monkeypatch.setenv("CHORUS_SIDECAR_DIARIZER", "sortformer")
    monkeypatch.setenv("CHORUS_SIDECAR_PHI4_MODEL", "microsoft/Phi-4-multimodal-instruct")
    monkeypatch.setenv("CHORUS_SIDECAR_PORT", "9999")
    s = SidecarSettings()
    assert (s.diarizer, s.phi4_model, s.port) == ("sortformer", "microsoft/Phi-4-multimodal-instruct", 9999)
    with pytest.raises(ValueError):
        SidecarSettings(diarizer="resemblyzer")


def test_embedder_follows_the_backend():
    from torch_models.service import embedder_kind

    assert embedder_kind(SidecarSettings()) == "campplus"
    assert embedder_kind(SidecarSettings(diarizer="cluster")) == "campplus"  # the old name, an alias
    assert embedder_kind(SidecarSettings(diarizer="sortformer")) == "titanet"
    assert embedder_kind(SidecarSettings(embedder="titanet")) == "titanet"


def test_sidecar_command_builds_settings_and_runs_uvicorn(monkeypatch):
    import uvicorn

    from torch_models.cli import sidecar_command

    calls = {}

    def fake_run(server, sockets=None):
        c = server.config
        calls["app"], calls["kwargs"] = c.app, {"host": c.host, "port": c.port, "drain_s": c.timeout_graceful_shutdown}

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setenv("CHORUS_SIDECAR_SHUTDOWN_TIMEOUT_S", "12")
    monkeypatch.setenv("CHORUS_SIDECAR_PHI4_IDLE_TTL_S", "30")
    result = CliRunner().invoke(
        sidecar_command,
        [
            "--port",
            "8123",
            "--diarizer",
            "sortformer",
            "--sortformer-model",
            "/m/sf.nemo",
            "--titanet-model",
            "/m/tn.nemo",
            "--phi4-model",
            "/m/phi",
            "--phi4-adapter",
            "",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--no-warmup",
            "--max-window",
            "600",
            "--segmentation-step",
            "2",
            "--torch-threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    sidecar = calls["app"].state.sidecar
    s = sidecar.settings
    assert calls["kwargs"] == {"host": "127.0.0.1", "port": 8123, "drain_s": 12.0}
    assert (s.diarizer, s.sortformer_model, s.titanet_model) == ("sortformer", "/m/sf.nemo", "/m/tn.nemo")
    assert s.phi4_model == "/m/phi" and s.phi4_adapter == "" and s.phi4_idle_ttl_s == 30
    assert s.api_keys == ["k1", "k2"] and s.warmup is False
    assert (s.max_window_s, s.segmentation_step_s, s.torch_threads) == (600.0, 2.0, 1)
    assert sidecar.diarizer is None  # loaded by the lifespan, not at import: NeMo is imported there
    assert sidecar.phi4.configured and not sidecar.phi4.loaded


def test_sidecar_command_rejects_unknown_backend():
    from torch_models.cli import sidecar_command

    result = CliRunner().invoke(sidecar_command, ["--diarizer", "resemblyzer"])
    assert result.exit_code != 0 and "resemblyzer" in result.output
