"""Offline batched inference: ``LLM(...).generate()`` and ``.chat()``, as in vLLM.

Every request is checked before any is queued, output constraints included
(``SamplingParams(structured_outputs=...)``: a constraint that does not compile raises its
``StructuredOutputError`` here, naming the problem). ``chat(..., tools=[...])`` shows the tools
to the chat template; reading calls out of the text is the caller's (or the server's) business.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence as Seq
from typing import Any

from tqdm import tqdm

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

Prompt = str | list[int] | dict[str, Any]
Message = dict[str, Any]


class LLM:
    """``LLM(model=None)`` loads the embedded default model (SmolLM2-135M-Instruct)."""

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ValueError(f"unknown LLM argument(s): {', '.join(unknown)}")
        self.engine = LLMEngine(EngineConfig(model=model, **kwargs))
        self._counter = itertools.count()

    @classmethod
    def from_engine(cls, engine: LLMEngine) -> LLM:
        """An ``LLM`` around an engine built elsewhere (on a model already loaded, say)."""
        llm = cls.__new__(cls)
        llm.engine = engine
        llm._counter = itertools.count()
        return llm

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        prompt_list = _as_prompt_list(prompts)
        params = _broadcast_params(sampling_params, len(prompt_list))
        encoded = []
        for prompt, p in zip(prompt_list, params, strict=True):  # validate everything before queueing anything
            p.validate()
            if p.structured_outputs is not None:
                self.engine.check_constraint(p.structured_outputs)
            text, ids = self.engine.encode_prompt(_prompt_value(prompt))
            self.engine.check_length(len(ids), p)
            encoded.append(ids if text is None else text)
        request_ids = [str(next(self._counter)) for _ in encoded]
        for request_id, prompt, p in zip(request_ids, encoded, params, strict=True):
            self.engine.add_request(request_id, prompt, p)
        return self._run(request_ids, use_tqdm)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[RequestOutput]:
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise ValueError("this model was loaded without a tokenizer, so it has no chat template")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        template_kwargs = dict(chat_template_kwargs or {})
        if tools is not None:
            template_kwargs["tools"] = tools
        prompts = [
            tokenizer.apply_chat_template(conv, add_generation_prompt=add_generation_prompt,
                                          chat_template=chat_template, **template_kwargs)
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True)
        started = time.perf_counter()
        prompt_tokens = output_tokens = 0
        while self.engine.has_unfinished_requests():
            for out in self.engine.step(final_only=True):
                if out.finished:
                    done[out.request_id] = out
                    prompt_tokens += len(out.prompt_token_ids)
                    output_tokens += sum(len(o.token_ids) for o in out.outputs)
                    elapsed = time.perf_counter() - started
                    bar.set_postfix_str(
                        f"est. speed input: {prompt_tokens / elapsed:.2f} toks/s, "
                        f"output: {output_tokens / elapsed:.2f} toks/s"
                    )
                    bar.update(1)
        bar.close()
        return [done[i] for i in request_ids]


def _as_prompt_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    items: list[Any] = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [items]  # one prompt of token ids
    return items


def _prompt_value(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if "prompt" in prompt:
            return prompt["prompt"]
        raise ValueError("a dict prompt needs 'prompt' or 'prompt_token_ids'")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return prompt
    raise ValueError(f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")


def _broadcast_params(params: SamplingParams | Seq[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} sampling params for {n} prompts")
    return params
