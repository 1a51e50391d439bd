"""The bounds of every value a client controls, defined once.

The server's msgspec request structs (server/protocol.py) turn these into schema constraints, so
the OpenAPI document shows them and a request outside them is a 400 before any work is done;
``SamplingParams.validate`` checks the same numbers for offline use and for anything that reaches
the engine another way. Each bound exists for one of two reasons: the value lands in a device
array of a fixed dtype (int32 ids and counts, float32 settings), or its size multiplies work that
one request could impose on every other (``n``, stop lists, logit-bias entries, prompt batches).
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Samples per prompt; OpenAI's own limit.
MAX_N = 128
# Prompts in one completions request, and sequences (prompts x n) it may start in all.
MAX_PROMPTS_PER_REQUEST = 128
MAX_SEQUENCES_PER_REQUEST = 256

# Float settings: finite, so float32 on the device never sees inf or nan.
MAX_TEMPERATURE = 100.0
# Temperatures below this are greedy (vLLM's rule): dividing logits by them would overflow float32.
GREEDY_TEMPERATURE_EPS = 1e-5
MIN_PENALTY, MAX_PENALTY = -2.0, 2.0  # presence and frequency penalties (OpenAI's range)
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0

# Token-count fields live in int32 device arrays.
MAX_TOKENS_LIMIT = INT32_MAX

MAX_LOGPROBS = 20  # logprobs, top_logprobs, prompt_logprobs
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_LOGIT_BIAS = 100.0  # |bias| per token (OpenAI's range)
# The sampler's bias row per sequence, a fixed width of every planned program (engine/bucket_plan.py):
# logit_bias entries plus, while min_tokens holds, the eos and stop ids it suppresses.
MAX_BIAS_ROW_ENTRIES = 1024
MAX_STOP_STRINGS = 32
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 128

# Structured outputs (engine/structured_output/spec.py) and tools (server/tool_parsers/tools.py): their
# size is compile time and per-step mask work in the engine core, shared by every request.
MAX_SPEC_CHARS = 256 * 1024  # a JSON schema (as compact JSON), a regex or a grammar
MAX_CHOICES = 1024  # strings of a choice constraint
MAX_CHOICE_CHARS = 4096  # characters of one of them
MAX_TOOLS = 128  # OpenAI's limit

# Chat requests.
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 1024
MAX_CHAT_TEMPLATE_CHARS = 64 * 1024
# A text prompt longer than this many characters per context token cannot fit: refused before tokenizing.
MAX_CHARS_PER_TOKEN = 64
# JSON bodies: nesting deeper than this is refused before decoding (deep nesting is how a 3 KB
# body exhausts the decoder's recursion limit).
MAX_JSON_DEPTH = 64
MAX_BODY_BYTES = 16 * 1024 * 1024
