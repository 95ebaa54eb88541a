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


def _chat_body(image_path: str, question: str) -> dict:
    with open(image_path, "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    return {"model": "tiny", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}]}


OPENAI_CLIENT = """
import json, sys
from openai import OpenAI
base, body = sys.argv[1], json.loads(sys.stdin.read())
client = OpenAI(base_url=base + "/v1", api_key="none")
reply = client.chat.completions.create(**body)
print(json.dumps({"prompt_tokens": reply.usage.prompt_tokens, "text": reply.choices[0].message.content}))
"""


def test_concurrent_requests_over_http_and_the_openai_client_agree(server, payload):  # noqa: F811
    from concurrent.futures import ThreadPoolExecutor

    base, proc, _ = server
    body = _chat_body(payload["images"][0], "What is shown in the picture?")
    with ThreadPoolExecutor(max_workers=3) as pool:  # three at once: continuous batching on the server
        replies = list(pool.map(lambda _: http(base + "/v1/chat/completions", body, timeout=180), range(3)))
    assert all(status == 200 for status, _ in replies), replies
    answers = [json.loads(text) for _, text in replies]
    assert len({a["usage"]["prompt_tokens"] for a in answers}) == 1
    assert len({a["choices"][0]["message"]["content"] for a in answers}) == 1  # greedy: the same answer
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    client = subprocess.run([os.path.join(vllm_venv(), "bin", "python"), "-c", OPENAI_CLIENT, base],
                            input=json.dumps(body), capture_output=True, text=True, timeout=180, env=env)
    assert client.returncode == 0, client.stderr[-3000:]
    via_openai = json.loads(client.stdout.strip().splitlines()[-1])
    assert via_openai["prompt_tokens"] == answers[0]["usage"]["prompt_tokens"]
    assert via_openai["text"] == answers[0]["choices"][0]["message"]["content"]
    assert proc.poll() is None


def test_chat_completion_counts_k_image_tokens_and_shuts_down_cleanly(server, payload):  # noqa: F811
    from transformers import AutoProcessor

    base, proc, log = server
    question = "What is shown in the picture?"
    body = _chat_body(payload["images"][0], question)
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
