"""The child process that renders client-supplied chat templates (run as a script, never imported).

It reads length-prefixed JSON jobs on stdin and answers each on stdout with ``{"text": ...}`` or
``{"error": ...}``. A template is code from the network: running it here means a template that
loops forever or builds a huge string costs this process, which the server kills after its time
limit, and never the server's event loop. It imports nothing from Tessera, so it starts without JAX.
The server imports its framing (``read_frame``, ``write_frame``), so transformers is imported in
``main`` only: importing this module loads nothing.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from typing import IO, Any

_HEADER = struct.Struct("!I")


def read_frame(stream: IO[bytes]) -> Any | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    return json.loads(stream.read(size))


def write_frame(stream: IO[bytes], payload: Any) -> None:
    data = json.dumps(payload).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def render(job: dict[str, Any], render_jinja_template: Callable[..., Any]) -> dict[str, Any]:
    try:
        rendered, _ = render_jinja_template(
            conversations=[job["messages"]], tools=job.get("tools"), chat_template=job["template"],
            add_generation_prompt=job["add_generation_prompt"], **job["kwargs"],
        )
    except Exception as err:  # noqa: BLE001 - any failure of client code is the client's error
        return {"error": f"{type(err).__name__}: {err}"[:1000]}
    text = rendered[0]
    if len(text) > job["max_chars"]:
        return {"error": f"the rendered prompt has {len(text)} characters, more than the {job['max_chars']} "
                         "this model's context could hold"}
    return {"text": text}


def main() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    sys.setrecursionlimit(2000)  # recursive macros end in RecursionError, reported as the client's error
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_frame(stdout, {"ready": True})
    while (job := read_frame(stdin)) is not None:
        write_frame(stdout, render(job, render_jinja_template))


if __name__ == "__main__":
    main()
