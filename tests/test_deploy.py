"""The deployment in deploy/ (issue #17): the compose file and the Prometheus/Grafana configs are
checked against each other and against the live /metrics, and the nginx config runs for real in
front of the server, streaming a completion through it.

nginx is a Debian package (CI installs it, .ci/run). Without it the nginx test skips, except when
TESSERA_REQUIRE_NGINX=1 (CI sets it): then a missing nginx is a failure, never a silent skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from engine.request_limits import MAX_BODY_BYTES

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REPO = DEPLOY.parent


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_file_wires_server_proxy_and_monitoring() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"tessera", "nginx", "prometheus", "grafana"}
    tessera = services["tessera"]
    assert (REPO / tessera["build"]["dockerfile"]).is_file()
    assert "/health" in " ".join(tessera["healthcheck"]["test"])
    assert services["nginx"]["depends_on"]["tessera"]["condition"] == "service_healthy"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    override = yaml.safe_load((DEPLOY / "docker-compose.cuda.yml").read_text())
    assert (REPO / override["services"]["tessera"]["build"]["dockerfile"]).is_file()
    for target in ("cpu", "cuda", "tpu"):
        dockerfile = (DEPLOY / "docker" / f"Dockerfile.{target}").read_text()
        assert "engine.serve" in dockerfile and "HEALTHCHECK" in dockerfile
        for copied in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
            assert (REPO / copied).exists(), f"Dockerfile.{target} copies missing {copied}"


def test_prometheus_scrapes_the_compose_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["tessera:8000"]
    assert "tessera" in _compose()["services"] and "--port 8000" in _compose()["services"]["tessera"]["command"]


def test_dashboard_queries_only_series_the_server_exports(tiny_server: Any) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        body = {"model": "tiny", "prompt": [1, 2], "max_tokens": 2}
        assert http.post("/v1/completions", json=body).status_code == 200
        exported = {line.split("{")[0].split(" ")[0] for line in http.get("/metrics").text.splitlines()
                    if line and not line.startswith("#")}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "tessera.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"vllm:[a-z0-9_]+", target["expr"])}
    assert len(used) >= 15
    assert used <= exported, sorted(used - exported)
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"


# ---- nginx for real ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def nginx_url(tiny_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        if os.environ.get("TESSERA_REQUIRE_NGINX") == "1":
            pytest.fail("nginx is required (TESSERA_REQUIRE_NGINX=1) but not installed")
        pytest.skip("nginx is not installed (apt-get install nginx-light); CI requires it")
    work = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    upstream = tiny_server.url.removeprefix("http://")
    site = (DEPLOY / "nginx" / "tessera.conf").read_text()
    site = site.replace("server tessera:8000", f"server {upstream}").replace("listen 80;", f"listen 127.0.0.1:{port};")
    (work / "tessera.conf").write_text(site)
    temp_paths = "\n".join(f"    {kind}_temp_path {work}/{kind};" for kind in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (work / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log;\n"
        + f"events {{}}\nhttp {{\n    access_log off;\n{temp_paths}\n    include {work}/tessera.conf;\n}}\n")
    check = subprocess.run([nginx, "-t", "-p", str(work), "-c", str(work / "nginx.conf")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf")], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/health", timeout=2)
            break
        except httpx.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(30)


def test_nginx_streams_sse_unbuffered(nginx_url: str, tiny_server: Any) -> None:
    assert httpx.get(f"{nginx_url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{nginx_url}/metrics", timeout=10).status_code == 404  # internal only
    body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 300, "ignore_eos": True, "stream": True,
            "temperature": 0}
    lines: list[str] = []
    running_at_first_chunk: list[int] = []
    with httpx.stream("POST", f"{nginx_url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line and not lines:
                running_at_first_chunk.append(tiny_server.engine_loop.num_pending)
            if line:
                lines.append(line)
    assert running_at_first_chunk[0] >= 1  # the first chunk came through while the request still ran
    assert lines[-1] == "data: [DONE]"
    tokens = sum(len(json.loads(line.removeprefix("data: "))["choices"]) for line in lines[:-1])
    assert tokens >= 2


def test_nginx_refuses_oversized_bodies(nginx_url: str) -> None:
    response = httpx.post(f"{nginx_url}/v1/completions", content=b"x" * (MAX_BODY_BYTES + 1),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413


def test_nginx_streams_concurrently(nginx_url: str) -> None:
    """Several streams at once through the proxy, each complete (keepalive upstream, no mixing)."""
    results: list[str] = []

    def one() -> None:
        body = {"model": "tiny", "prompt": [4, 5], "max_tokens": 8, "stream": True}
        with httpx.stream("POST", f"{nginx_url}/v1/completions", json=body, timeout=120) as response:
            results.append([line for line in response.iter_lines() if line][-1])

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == ["data: [DONE]"] * 6
