"""The engine core in its own process, and the pieces an API server uses to talk to it.

The core process (``process.py``) owns the LLMEngine and does nothing but steps: it takes add and
abort messages, runs the engine in its text-free mode and sends each API server one message per
step with its requests' new token ids, logprobs, finish reasons and the engine's stats. API
server processes (``client.py``, ``output_processor.py``) own HTTP, tokenization, incremental
detokenization and stop strings. Messages are msgspec structs (``messages.py``) on ZeroMQ IPC
sockets (``transport.py``).
"""
