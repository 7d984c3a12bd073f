"""apo serve-metrics: the exposition parses with the official Prometheus parser, and the server
answers /metrics and /metrics.json on loopback until it is told to stop."""

import json
import signal
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


def run(apo_bin, *args):
    return subprocess.run([str(apo_bin), *map(str, args)], capture_output=True, text=True, timeout=60)


def families(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_once_prints_an_exposition_that_prometheus_parses(apo_bin):
    out = run(apo_bin, "serve-metrics", "--once")
    assert out.returncode == 0, out.stderr
    parsed = families(out.stdout)
    # The parser drops _total from counter names.
    assert parsed["apo_monitor_samples"].type == "counter"
    assert parsed["apo_monitor_samples"].samples[0].value == 1
    assert parsed["apo_host_memory_used_ratio"].type == "gauge"
    assert 0 < parsed["apo_host_memory_used_ratio"].samples[0].value < 1
    assert parsed["apo_process_resident_memory_bytes"].samples[0].value > 0
    kinds = {s.labels["kind"]: s.value for s in parsed["apo_alert_active"].samples}
    assert set(kinds) == {"vram_pressure", "ram_pressure", "low_gpu_utilization", "slow_generation"}


def test_once_json(apo_bin):
    out = run(apo_bin, "serve-metrics", "--once", "--json")
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert metrics["samples_taken"] == 1
    assert 0 < metrics["sample"]["host_memory_used_ratio"] < 1


def test_serves_metrics_until_terminated(apo_bin):
    server = subprocess.Popen(
        [str(apo_bin), "serve-metrics", "--port", "0", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = server.stdout.readline()
        assert first.startswith("serving metrics on http://127.0.0.1:"), first
        base = first.split()[3].rsplit("/", 1)[0]  # http://127.0.0.1:PORT

        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            parsed = families(response.read().decode())
        assert "apo_host_memory_used_ratio" in parsed

        with urllib.request.urlopen(base + "/metrics.json", timeout=10) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert json.loads(response.read())["samples_taken"] >= 1

        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nothing", timeout=10)
        assert missing.value.code == 404

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert "stopped after" in server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_taken_port_is_an_error(apo_bin):
    server = subprocess.Popen(
        [str(apo_bin), "serve-metrics", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        port = server.stdout.readline().split()[3].rsplit(":", 1)[1].split("/")[0]
        out = run(apo_bin, "serve-metrics", "--port", port)
        assert out.returncode == 1
        assert f"cannot listen on 127.0.0.1 port {port}" in out.stderr
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
