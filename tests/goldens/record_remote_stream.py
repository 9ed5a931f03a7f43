#!/usr/bin/env python3
"""Records another OpenAI-compatible server's streamed reply, byte for byte,
for tests/integration/remote.rs to play back to `greve ask --remote`.

The server is llama-cpp-python's (`pip install 'llama-cpp-python[server]'`,
which builds llama.cpp), serving tests/goldens/tiny-v1-f16.gguf. The same
greedy request is sent twice: streamed, its raw HTTP response (status line,
headers, chunked body with its keep-alive comments and CRLFs) goes to
remote-stream.http; whole, its reply's text and usage go to
remote-stream.json with the request, for the test to compare greve's output
with.

usage: python3 tests/goldens/record_remote_stream.py
"""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUEST = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "Et la grève, alors ?"}],
    "max_tokens": 24,
    "temperature": 0,
    "seed": 4,
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_post(port, body):
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def main():
    import llama_cpp

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(HERE / "tiny-v1-f16.gguf"),
         "--model_alias", "tiny", "--port", str(port), "--chat_format", "mistral-instruct"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models")
                break
            except OSError:
                time.sleep(0.2)
        streamed = raw_post(port, dict(REQUEST, stream=True))
        whole = json.loads(raw_post(port, REQUEST).split(b"\r\n\r\n", 1)[1])
    finally:
        server.terminate()
        server.wait()
    (HERE / "remote-stream.http").write_bytes(streamed)
    golden = {
        "server": f"llama-cpp-python {llama_cpp.__version__}",
        "request": REQUEST,
        "content": whole["choices"][0]["message"]["content"],
        "finish_reason": whole["choices"][0]["finish_reason"],
        "usage": whole["usage"],
    }
    (HERE / "remote-stream.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
