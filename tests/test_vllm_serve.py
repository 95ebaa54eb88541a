"""``vllm serve`` with the plugin (vLLM venv, CPU, tiny llava-hf checkpoint from
test_vllm_llava.py): the OpenAI-compatible server on 127.0.0.1 and a free port, one chat
completion with a base64 PNG over plain HTTP, ``usage.prompt_tokens`` = the chat prompt's
text tokens + K (the image's 576 placeholders became K), and a clean shutdown on SIGINT
(exit code 0, no vLLM process left, no traceback before the shutdown began).
Skips without the venv outside CI (fails under CI), like test_vllm_llava.py."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from test_vllm_llava import K, N, SETTING, checkpoint, payload, venv_python, vllm_venv  # noqa: F401 -- fixtures

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(600)]
START_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read().decode()


@pytest.fixture(scope="module")
def server(venv_python, checkpoint, tmp_path_factory):  # noqa: F811
    port = free_port()
    log = open(tmp_path_factory.mktemp("vllm-serve") / "server.log", "w+")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HOLOV_PRUNING=SETTING, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1",
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_NO_USAGE_STATS="1")
    command = [os.path.join(vllm_venv(), "bin", "vllm"), "serve", checkpoint, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "4",
               "--limit-mm-per-prompt", json.dumps({"image": 1}), "--served-model-name", "tiny"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path_factory.getbasetemp()),
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"vllm serve exited with {proc.returncode}:\n{log.read()[-6000:]}")
            try:
                if http(base + "/health", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                log.seek(0)
                raise AssertionError(f"vllm serve did not answer /health in {START_TIMEOUT} s:\n{log.read()[-6000:]}")
            time.sleep(2)
        yield base, proc, log
    finally:
        if proc.poll() is None or group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_chat_completion_counts_k_image_tokens_and_shuts_down_cleanly(server, payload):  # noqa: F811
    from transformers import AutoProcessor

    base, proc, log = server
    question = "What is shown in the picture?"
    with open(payload["images"][0], "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    body = {"model": "tiny", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}]}
    status, text = http(base + "/v1/chat/completions", body, timeout=120)
    assert status == 200, text
    reply = json.loads(text)
    processor = AutoProcessor.from_pretrained(payload["model"])
    ids = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                                        add_generation_prompt=True, tokenize=False)
    full = processor.tokenizer(ids.replace("<image>", "<image>" * N), add_special_tokens=False)["input_ids"]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert full.count(image_id) == N
    assert reply["usage"]["prompt_tokens"] == len(full) - N + K, (reply["usage"], len(full))
    assert reply["usage"]["completion_tokens"] == 4

    proc.send_signal(signal.SIGINT)  # Ctrl-C to the server; it stops its engine processes itself
    proc.wait(timeout=90)
    deadline = time.time() + 30
    while group_alive(proc.pid):  # the engine core and worker must not outlive it
        assert time.time() < deadline, "vLLM processes outlived the server"
        time.sleep(0.5)
    assert proc.returncode == 0, proc.returncode
    log.seek(0)
    text = log.read()
    assert "Application shutdown complete" in text
    # vLLM 0.32's own SIGINT path may log EngineDeadError from its output handler once the
    # shutdown has begun (exit code 0, nothing left running): only tracebacks before it count.
    serving = text.split("[shutdown]", 1)[0]
    assert "Traceback" not in serving, "the server logged a traceback while serving"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
