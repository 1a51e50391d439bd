"""The tool-call formats models are trained on.

- ``hermes`` (Hermes, Qwen2.5, Qwen3): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  one block per call, after optional text.
- ``llama3_json`` (Llama 3.1/3.2/3.3 with JSON tool calling): the whole output is
  ``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``, several joined by ``;``.
- ``mistral`` (Mistral Instruct v0.3, Nemo): ``[TOOL_CALLS]`` then a JSON array
  ``[{"name": ..., "arguments": {...}}, ...]``; newer ones (Mistral Small 3.x, Magistral,
  Devstral): ``[TOOL_CALLS]name[ARGS]{...}`` per call. Call ids are 9 alphanumerics, as its
  template requires. The control markers are special tokens: the request must keep special tokens in
  its text (``skip_special_tokens=False``) for these parsers to see them.
"""

from __future__ import annotations

from server.tool_parsers.json_scan import PartialCall, skip_whitespace
from server.tool_parsers.mistral_v11 import scan_named_args_calls
from server.tool_parsers.parser import ToolParser
from server.tool_parsers.types import mistral_call_id


class HermesToolParser(ToolParser):
    name = "hermes"
    start_marker = "<tool_call>"
    separators = ("<tool_call>", "</tool_call>")


class MistralToolParser(ToolParser):
    """Both Mistral layouts: ``[TOOL_CALLS][{...}, ...]`` (v3 tokenizers) and, from the v11
    tokenizer on (Mistral Small 3.x, Magistral, Devstral), ``[TOOL_CALLS]name[ARGS]{...}`` per call."""

    name = "mistral"
    start_marker = "[TOOL_CALLS]"
    separators = ("[TOOL_CALLS]", "[", ",", "]")
    new_call_id = staticmethod(mistral_call_id)

    def scan_region(self, text: str, start: int, final: bool) -> tuple[list[PartialCall], int | None]:
        region = text.find(self.start_marker)  # the layout shows right after the first marker
        first = skip_whitespace(text, region + len(self.start_marker))
        if region < 0 or first >= len(text) or text[first] in "[{":
            return super().scan_region(text, start, final)
        return scan_named_args_calls(text, start, self.start_marker)


class Llama3JsonToolParser(ToolParser):
    """Calls only when the output opens with one: a ``{`` or the python tag, after whitespace."""

    name = "llama3_json"
    python_tag = "<|python_tag|>"
    separators = (python_tag, ";")

    def split(self, text: str, final: bool) -> tuple[int, int | None]:
        start = skip_whitespace(text, 0)
        rest = text[start:]
        if rest.startswith(("{", self.python_tag)):
            return 0, start
        if not final and self.python_tag.startswith(rest):  # undecided (also while only whitespace)
            return 0, None
        return len(text), None


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser)
}


def get_tool_parser(name: str) -> ToolParser:
    """The parser registered as ``name`` (the ``--tool-call-parser`` value)."""
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool call parser {name!r}; choose from {', '.join(sorted(TOOL_PARSERS))}") from None
