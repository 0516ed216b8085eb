"""Chorus on Ray Serve (server/ray_app.py): the config files against Ray's schema, then a local Ray
cluster of two nodes with two whisper replicas (tiny model), one sidecar and the router ingress,
driven over HTTP with the OpenAI SDK."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import yaml

from bench.bad_inputs import NAMES, bad_inputs
from bench.procs import free_port
from server.core.audio import to_wav_bytes
from server.ray_app import APP_NAME, SIDECAR, WHISPER, Autoscaling, RayServeSettings, build_app

DEPLOY = Path(__file__).resolve().parents[1] / "server" / "deploy"
MAX_AUDIO_S = 600.0
MAX_UPLOAD_MB = 8.0


# ---------------------------------------------------------------------------------------------
# config files


def test_serve_config_and_rayservice_validate_against_rays_schema():
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())
    manifest = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    for doc in (config, embedded):
        schema = ServeDeploySchema.parse_obj(doc)
        (app,) = schema.applications
        assert app.import_path == "server.ray_app:build_app" and app.route_prefix == "/"
        RayServeSettings(**app.args)  # our own settings accept the args
        built = call_user_app_builder_with_args_if_necessary(build_app, app.args)  # what `serve run` does
        assert type(built).__name__ == "Application"
    # the schema is strict: a misspelt field is refused, so the files are really checked
    broken = copy.deepcopy(config)
    broken["applications"][0]["import_pth"] = broken["applications"][0].pop("import_path")
    with pytest.raises(Exception, match="import_pth|import_path"):
        ServeDeploySchema.parse_obj(broken)
    with pytest.raises(Exception, match="max_replica"):
        RayServeSettings(whisper_deployment={"autoscaling": {"max_replica": 3}}).model_dump()
    # GPUs: the worker pods carry them and the whisper replicas ask for them
    workers = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert embedded["applications"][0]["args"]["whisper_deployment"]["num_gpus"] >= 1
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == __import__("ray").__version__


def test_deployment_options_follow_the_settings():
    s = RayServeSettings(
        whisper={"max_concurrent": 5},
        whisper_deployment={"replicas": 3, "num_gpus": 0.5},
        sidecar_deployment={"autoscaling": Autoscaling(max_replicas=4).model_dump()},
    )
    opts = s.whisper_deployment.options(max_ongoing_requests=5)
    assert opts["num_replicas"] == 3 and opts["ray_actor_options"]["num_gpus"] == 0.5
    assert opts["max_ongoing_requests"] == 5 and "autoscaling_config" not in opts
    side = s.sidecar_deployment.options(max_ongoing_requests=16)
    assert "num_replicas" not in side and side["autoscaling_config"]["max_replicas"] == 4


# ---------------------------------------------------------------------------------------------
# a two-node cluster


def settings_for(tiny_whisper_dir, cache_dir, **deployment) -> RayServeSettings:
    limits = {"max_audio_s": MAX_AUDIO_S, "max_upload_mb": MAX_UPLOAD_MB, "cache_dir": str(cache_dir)}
    return RayServeSettings(
        whisper={
            "model": str(tiny_whisper_dir),
            "max_new_tokens": 32,
            "batch_size": 2,
            "max_concurrent": 4,
            "temperature_fallback": False,  # the random model's windows all fail: 1 decode each, not 6
            **limits,
        },
        sidecar={"torch_threads": 1, "max_audio_s": 3600, "cache_dir": str(cache_dir)},
        router={"ready_poll_s": 0.5, "max_chunk_s": 10, "diarization_window_s": 10, **limits},
        whisper_deployment=deployment.get("whisper_deployment", {"replicas": 2, "num_cpus": 1}),
        sidecar_deployment={"replicas": 1, "num_cpus": 1},
        ready_timeout_s=600,
        version="test",  # a redeploy changing only the autoscaling updates the replicas in place
    )


@pytest.fixture(scope="module")
def cluster(tiny_whisper_dir, tiny_xla_cache):
    """Two Ray nodes (2 logical CPUs each) on this machine, Serve's proxy on a free port, the app running.

    The whisper replicas (and the ones autoscaling and a kill start later) load the tiny engine's
    executables from the session's XLA cache (``tiny_xla_cache``) instead of compiling them.
    """
    cache_dir = tiny_xla_cache
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    # no dashboard: nothing here reads it, and its processes cost ~4 s of start-up on 2 cores
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, logging_level="ERROR")
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(settings_for(tiny_whisper_dir, cache_dir)), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{url}/ready").text
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def speech(seconds: float) -> bytes:
    """``seconds`` of the two-voice espeak conversation, repeated (the tiny model's words are noise;
    the point is the plumbing)."""
    from torch_models.synth import conversation

    conv = conversation()
    reps = int(np.ceil(seconds / (len(conv.samples) / 16000)))
    return to_wav_bytes(np.tile(conv.samples, reps)[: int(seconds * 16000)])


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-none", max_retries=0, timeout=300)


def replica_counts(url: str, deployment: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == "chorus_ray_backend_requests_total" and s.labels["deployment"] == deployment:
                out[s.labels["replica"]] = s.value
    return out


async def test_openai_sdk_through_the_ingress_and_work_spreads_over_both_replicas(cluster):
    client = sdk(cluster)
    wav = speech(25.0)  # three 10 s chunks
    before = replica_counts(cluster, WHISPER)
    results = await asyncio.gather(
        *[
            client.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", wav, "audio/wav"), response_format="verbose_json"
            )
            for _ in range(2)
        ]
    )
    for r in results:
        assert r.duration == pytest.approx(25.0, abs=0.1) and r.segments is not None
    wav = speech(12.0)  # two chunks (and two diarization windows)
    diarized = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("a.wav", wav, "audio/wav"),
        response_format="diarized_json",
        chunking_strategy="auto",
    )
    assert diarized.segments and {s.speaker for s in diarized.segments} <= {"A", "B", "C", "D"}
    assert all(s.start <= s.end for s in diarized.segments)
    short = speech(5.0)  # one chunk: the route is what is checked here
    translated = await client.audio.translations.create(model="whisper-1", file=("a.wav", short, "audio/wav"))
    assert isinstance(translated.text, str)
    stream = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav, "audio/wav"), stream=True)
    events = [ev.type async for ev in stream]
    assert events[-1] == "transcript.text.done" and "transcript.text.delta" in events
    after = replica_counts(cluster, WHISPER)
    worked = {tag for tag, n in after.items() if n > before.get(tag, 0)}
    assert len(worked) == 2, after  # both whisper replicas served chunks
    assert replica_counts(cluster, SIDECAR)


async def test_the_bad_input_corpus_gets_the_plain_servers_answers(cluster, speech_samples):
    from tests.test_bad_input import check

    entries = bad_inputs(speech_samples, max_audio_s=MAX_AUDIO_S, max_upload_mb=MAX_UPLOAD_MB)
    assert [e.name for e in entries] == list(NAMES)
    async with httpx.AsyncClient(base_url=cluster, timeout=300) as http:
        for entry in entries:
            check(entry, await http.post("/v1/audio/transcriptions", **entry.httpx_kwargs()))


async def test_a_replica_killed_mid_request(cluster):
    import ray

    client = sdk(cluster)
    wav = speech(60.0)  # six chunks each, eighteen in flight over both replicas when one is killed
    victim = next(
        name
        for name in ray.util.list_named_actors(all_namespaces=True)
        if isinstance(name, dict) and f"#{WHISPER}#" in name["name"]
    )

    async def one() -> tuple[int, object]:
        try:
            r = await client.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", wav, "audio/wav"), response_format="verbose_json"
            )
            return 200, r
        except openai.APIStatusError as exc:
            return exc.status_code, exc.body

    tasks = [asyncio.create_task(one()) for _ in range(3)]
    await asyncio.sleep(1.0)
    assert not any(t.done() for t in tasks)  # the kill lands mid-request
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=False)
    outcomes = await asyncio.gather(*tasks)
    for status, body in outcomes:
        # the chunk on the dead replica is retried on the other one, or the request fails cleanly
        assert status in (200, 503), (status, body)
        if status == 503:
            assert set(body) >= {"message", "type", "param", "code"}, body
        else:
            assert body.duration == pytest.approx(60.0, abs=0.1)
    assert sum(s == 200 for s, _ in outcomes) >= 2, outcomes
    # and the service keeps answering while Serve replaces the replica
    r = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", speech(5.0), "audio/wav"))
    assert isinstance(r.text, str)


async def test_autoscaling_goes_from_one_to_two_replicas_and_back(cluster, tiny_whisper_dir, tiny_xla_cache):
    from ray import serve

    def running() -> int:
        status = serve.status().applications[APP_NAME].deployments[WHISPER]
        return status.replica_states.get("RUNNING", 0)

    async def wait_for(n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while running() != n:
            assert time.monotonic() < deadline, serve.status().applications[APP_NAME].deployments[WHISPER]
            await asyncio.sleep(0.5)

    auto = {
        "num_cpus": 1,
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0,
            "downscale_delay_s": 2,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    }
    # only the autoscaling config changes: Serve updates the deployment in place (no replica restart)
    serve.run(
        build_app(settings_for(tiny_whisper_dir, tiny_xla_cache, whisper_deployment=auto)),
        name=APP_NAME,
        route_prefix="/",
    )
    await wait_for(1, 120)  # idle: down to min_replicas
    client = sdk(cluster)
    wav = speech(10.0)  # one chunk: four clients keep four requests going, whatever their length
    stop = asyncio.Event()

    async def keep_busy() -> None:
        while not stop.is_set():
            await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav, "audio/wav"))

    load = [asyncio.create_task(keep_busy()) for _ in range(4)]
    try:
        await wait_for(2, 300)  # under load: up to max_replicas
    finally:
        stop.set()
        results = await asyncio.gather(*load, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    await wait_for(1, 120)  # idle again: back to one
