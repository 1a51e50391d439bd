"""Compiles a ``StructuredOutputSpec`` into a token-level grammar once, then hands out matchers.

Backend: llguidance (Microsoft's guidance engine, Rust with Python bindings, no PyTorch). It
builds its lexer lazily over a token trie, so compiling a schema is a few milliseconds and a
mask is computed per step in tens of microseconds (figures in docs/structured_outputs.md); it
takes JSON schema, regex, Lark and GBNF directly, and its matcher can roll back tokens.

Compiling builds one ``LLMatcher`` in its initial state (the costly part: grammar checks and
lexer setup); each request then gets a ``deep_copy`` of it (about a microsecond), so a schema
is compiled once however many requests use it. Results are cached per spec in an LRU, failures
too, so a client repeating a bad schema costs one compile. Compile errors raise
``StructuredOutputError`` naming the problem (answered with a 400). Thread-safe; ``compile_async``
compiles on a background thread so the engine loop never waits on a new schema.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import threading
from typing import TYPE_CHECKING, Any

import llguidance

from engine.structured_output.bitmask import allocate_bitmask
from engine.structured_output.matcher import GrammarMatcher
from engine.structured_output.regex_budget import MAX_REPETITION_SIZE, repetition_size
from engine.structured_output.spec import StructuredOutputError, StructuredOutputSpec

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # declared in llguidance's stub only

# Between JSON tokens: nothing, one space, or one line break with up to 20 indentation characters.
# Pretty-printed and compact JSON both pass; a model cannot spin on whitespace forever.
JSON_WHITESPACE = r"(?:\x20|\r?\n[\x20\t]{0,20})?"
_ANY_OBJECT_SCHEMA = '{"type": "object"}'
# Token subsets llguidance precomputes and applies wholesale when a lexer state admits all of
# them. Its defaults cover JSON string bodies of up to 10, 30 or any characters; 5 and 20 make
# strings with a ``maxLength`` (a budget of remaining characters) fall back to the slow per-token
# walk far less often: 2-2.5x less mask time for such strings over a 128k vocabulary.
_STRING_CHAR = r'[^"\\\x00-\x1F\x7F]'
MASK_SLICES = [*llguidance.LLTokenizer.general_slices(), _STRING_CHAR + "{1,5}", _STRING_CHAR + "{1,20}"]
DEFAULT_CACHE_SIZE = 256


class CompiledGrammar:
    """A compiled constraint: the template matcher that each request's matcher is copied from."""

    def __init__(self, spec: StructuredOutputSpec, template: llguidance.LLMatcher, vocab_size: int) -> None:
        self.spec = spec
        self._template = template
        self.vocab_size = vocab_size

    def matcher(self) -> GrammarMatcher:
        """A fresh matcher at the start of the constrained output."""
        return GrammarMatcher(self._template.deep_copy(), self.vocab_size)


class GrammarCompiler:
    """Turns specs into ``CompiledGrammar``s for one tokenizer and model vocabulary."""

    def __init__(self, ll_tokenizer: llguidance.LLTokenizer, cache_size: int = DEFAULT_CACHE_SIZE,
                 limits: llguidance.LLParserLimits | None = None) -> None:
        self._tokenizer = ll_tokenizer
        self._limits = limits
        self._cache: collections.OrderedDict[StructuredOutputSpec, CompiledGrammar | StructuredOutputError] = (
            collections.OrderedDict())
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None, **kwargs: Any) -> GrammarCompiler:
        """From an ``engine.tokenizer.Tokenizer``; ``vocab_size`` is the model's logits width when
        it differs from the tokenizer's (ids past the tokenizer are never allowed). About 0.5 s."""
        import llguidance.hf  # imports transformers: here, once a tokenizer exists, not on import

        ll_tokenizer = llguidance.hf.from_tokenizer(
            tokenizer.hf, n_vocab=vocab_size or tokenizer.vocab_size, eos_token=sorted(tokenizer.eos_token_ids),
            slices=MASK_SLICES)
        return cls(ll_tokenizer, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    def compile(self, spec: StructuredOutputSpec) -> CompiledGrammar:
        """The compiled grammar for ``spec`` (cached); raises ``StructuredOutputError``."""
        with self._lock:
            cached = self._cache.get(spec)
            if cached is not None:
                self._cache.move_to_end(spec)
        if cached is None:
            cached = self._compile_uncached(spec)
            with self._lock:
                self._cache[spec] = cached
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if isinstance(cached, StructuredOutputError):
            raise cached
        return cached

    def compile_async(self, spec: StructuredOutputSpec) -> concurrent.futures.Future[CompiledGrammar]:
        """``compile`` on a background thread (llguidance releases the GIL while it builds), so
        the engine loop keeps stepping; a cached spec gives an already finished future."""
        with self._lock:
            cached = self._cache.get(spec)
            if cached is None and self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar-compile")
            pool = self._pool
        if cached is None:
            assert pool is not None
            return pool.submit(self.compile, spec)
        done: concurrent.futures.Future[CompiledGrammar] = concurrent.futures.Future()
        if isinstance(cached, StructuredOutputError):
            done.set_exception(cached)
        else:
            done.set_result(cached)
        return done

    def matcher(self, spec: StructuredOutputSpec) -> GrammarMatcher:
        """Compile (or reuse) ``spec`` and return a fresh matcher for one request."""
        return self.compile(spec).matcher()

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._cache), "capacity": self._cache_size}

    def _compile_uncached(self, spec: StructuredOutputSpec) -> CompiledGrammar | StructuredOutputError:
        try:
            grammar = _to_llguidance(spec)
        except ValueError as err:
            return StructuredOutputError(f"invalid {spec.kind}: {err}")
        template = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0, limits=self._limits)
        if template.is_error():
            return StructuredOutputError(f"invalid {spec.kind}: {_first_lines(template.get_error())}")
        compiled = CompiledGrammar(spec, template, self._tokenizer.vocab_size)
        # The first mask finishes the lexer's set-up and shows a grammar that admits nothing.
        probe = compiled.matcher()
        probe.fill_bitmask(allocate_bitmask(1, self._tokenizer.vocab_size), 0)
        if probe.error is not None:
            return StructuredOutputError(f"invalid {spec.kind}: {_first_lines(probe.error)}")
        return compiled


def _to_llguidance(spec: StructuredOutputSpec) -> str:
    """The llguidance grammar text for a spec; raises ValueError on text it cannot even parse."""
    json_options: JsonCompileOptions = {"whitespace_pattern": JSON_WHITESPACE}
    for pattern in _patterns(spec):
        size = repetition_size(pattern)
        if size > MAX_REPETITION_SIZE:
            raise ValueError(f"the pattern {pattern[:60]!r} expands to about {size} states through its counted "
                             f"repetitions; the limit is {MAX_REPETITION_SIZE}")
    if spec.kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(spec.text, defaults=json_options)
    if spec.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema(_ANY_OBJECT_SCHEMA, defaults=json_options)
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.text)
    if spec.kind == "choice":
        alternatives = " | ".join(json.dumps(choice, ensure_ascii=False) for choice in spec.choices)
        return llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}")
    return llguidance.grammar_from("grammar", spec.text)


def _patterns(spec: StructuredOutputSpec) -> list[str]:
    """The regexes of a spec: the pattern itself, or a JSON schema's ``pattern`` values."""
    if spec.kind == "regex":
        return [spec.text]
    if spec.kind != "json_schema":
        return []
    found: list[str] = []
    todo: list[Any] = [json.loads(spec.text)]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def _first_lines(message: str, limit: int = 600) -> str:
    """llguidance errors can quote the whole grammar and the parser state; keep the head, which
    names the problem."""
    message = message.split("<state>", 1)[0].strip()
    if "NoExtension" in message:
        return "the constraint admits no output"
    return message if len(message) <= limit else message[:limit] + " ..."
