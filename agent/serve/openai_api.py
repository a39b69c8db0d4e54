"""The OpenAI-compatible HTTP API's shapes (pure): request bodies to sampling parameters,
replies and stream chunks to JSON, errors in OpenAI's error shape.

Fields as OpenAI and vLLM take them: model, prompt (or messages), max_tokens (chat also
max_completion_tokens), temperature (default 1, as OpenAI), top_p, top_k (vLLM's: -1 or 0 no
cut), stop (a string or a list), seed, stream, stream_options.include_usage, ignore_eos
(vLLM's) and n (1 only). Fields Gantry does not implement (echo, logprobs, best_of,
penalties, min_p, tools, a response_format) are refused when set to anything but their
neutral value; other unknown fields are ignored, as OpenAI's clients send many. Defaults:
max_tokens 16 for completions (OpenAI's), 512 for chat, either cut to the model's context.

Chat messages become one prompt with the tokenizer's chat template when the model has
one, else `plain_chat_prompt`: each message as "role: content" on its own line, then
"assistant:". A "developer" message (OpenAI's newer name) is a "system" one; content is
a string, null, or a list of text parts (joined by newlines); any other part (image_url,
input_audio, file) and earlier tool calls (an assistant's tool_calls) are refused, naming
the message, rather than silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gantry.v1 import inference_service_pb2 as pb

from agent.serve.events import Usage

COMPLETION_MAX_TOKENS = 16
CHAT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 1.0
SEED_LIMIT = 2**64
ROLES = ("system", "user", "assistant", "tool", "developer")
# Set to anything but these, a field Gantry does not implement is refused.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (False, None),
    "logprobs": (False, None, 0),
    "top_logprobs": (None, 0),
    "best_of": (1, None),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    # The model calls no tools and follows no schema: a client that asks for either is
    # told, rather than handed free text it would parse as a tool call or as JSON.
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    # vLLM's extra sampling fields.
    "repetition_penalty": (None, 1, 1.0),
    "min_tokens": (None, 0),
    "min_p": (None, 0, 0.0),
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """A request refused: the HTTP status, one line, and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


@dataclass(frozen=True)
class ApiCall:
    """One request, parsed: the prompt (chat: the messages; rendered later) and how."""

    prompt: str
    messages: tuple[Mapping[str, str], ...]
    params: pb.SamplingParams
    stream: bool
    include_usage: bool
    chat: bool
    max_tokens_given: bool = True  # else the default, which the server cuts to the context


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{name} must be a number, not {json.dumps(value)}", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer, not {json.dumps(value)}", name)
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{name} must be true or false, not {json.dumps(value)}", name)
    return value


def _stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]  # "" stops nothing: dropped, not matched everywhere
    raise _bad("stop must be a string or a list of strings", "stop")


def _prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise _bad(f"one prompt per request, not a list of {len(prompt)}", "prompt")
    if not isinstance(prompt, str):
        raise _bad("prompt must be a string (token ids are not accepted)", "prompt")
    return prompt


def _content(i: int, content: Any) -> str:
    """A message's content: a string, null (an assistant's turn that only called tools),
    or a list of parts of which only text ones are taken (joined by newlines, as vLLM)."""
    if content is None:
        return ""
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                what = json.dumps(kind) if isinstance(kind, str) else "a part without a type"
                raise _bad(
                    f"messages[{i}].content[{j}]: only text content is accepted, not {what} "
                    "(this server serves a text model)",
                    "messages",
                )
            if not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content[{j}].text must be a string", "messages")
            texts.append(part["text"])
        return "\n".join(texts)
    if not isinstance(content, str):
        raise _bad(f"messages[{i}]: content must be a string or a list of parts", "messages")
    return content


def _messages(body: Mapping[str, Any]) -> tuple[Mapping[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of {role, content}", "messages")
    out: list[Mapping[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _bad(f"messages[{i}]: role must be one of {', '.join(ROLES)}", "messages")
        # Earlier tool calls the model would not see: as tools, refused, not dropped.
        for calls in ("tool_calls", "function_call"):
            if message.get(calls) not in (None, []):
                raise _bad(
                    f"messages[{i}].{calls}: tool calls are not supported by this server",
                    "messages",
                )
        # OpenAI's "developer" (newer models' name for "system"): chat templates know
        # "system" only.
        role = "system" if message["role"] == "developer" else str(message["role"])
        out_message = {"role": role, "content": _content(i, message.get("content"))}
        if isinstance(message.get("name"), str) and message["name"]:
            out_message["name"] = message["name"]  # for a template that shows names
        out.append(out_message)
    return tuple(out)


def parse_call(body: Any, *, chat: bool, model_ids: Sequence[str]) -> ApiCall:
    """A completions (or chat completions) body; ApiError naming what to fix."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    model = body.get("model")
    if model not in (None, "", *model_ids):
        raise ApiError(
            404,
            f"model {json.dumps(model)} is not served here; this server serves "
            f"{json.dumps(model_ids[0])}",
            "model",
        )
    n = body.get("n")
    if n not in (None, 1):
        raise _bad(f"n must be 1 (one completion per request), not {json.dumps(n)}", "n")
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise _bad(f"{name} is not supported by this server; leave it out", name)
    name = "max_tokens"
    max_tokens = _integer(body, "max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens")
    else:
        name = "max_completion_tokens"
    given = max_tokens is not None
    if max_tokens is None:
        max_tokens = CHAT_MAX_TOKENS if chat else COMPLETION_MAX_TOKENS
    elif max_tokens < 1:
        raise _bad(f"{name} must be at least 1, not {max_tokens}", name)
    seed = _integer(body, "seed") or 0
    if seed == -1:
        seed = 0  # llama.cpp's "random", which its clients send by default: no seed
    if not 0 <= seed < SEED_LIMIT:
        raise _bad(f"seed must be between 0 and 2**64-1 (or -1: none), not {seed}", "seed")
    top_k = _integer(body, "top_k")  # vLLM's: -1 or 0 (and leaving it out) keep every token
    if top_k is not None and top_k < -1:
        raise _bad(f"top_k must be -1, 0 (no cut) or a number of tokens, not {top_k}", "top_k")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    params = pb.SamplingParams(
        max_tokens=min(max_tokens, 2**32 - 1),
        temperature=_number(body, "temperature", DEFAULT_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0),
        top_k=min(top_k, 2**32 - 1) if top_k and top_k > 0 else 0,
        stop=_stop(body),
        seed=seed,
        ignore_eos=_flag(body, "ignore_eos"),
    )
    return ApiCall(
        prompt="" if chat else _prompt(body),
        messages=_messages(body) if chat else (),
        params=params,
        stream=_flag(body, "stream"),
        include_usage=_flag(options, "include_usage"),
        chat=chat,
        max_tokens_given=given,
    )


def plain_chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """Messages joined for a model without a chat template."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def finish_reason(engine_reason: str) -> str:
    """OpenAI's names: an end-of-text token or a stop string is "stop"."""
    return "stop" if engine_reason in ("eos", "stop") else engine_reason


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object; prompt_tokens_details.cached_tokens as OpenAI reports its own
    prompt caching: the prompt tokens found in the server's prefix cache."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    }


@dataclass(frozen=True)
class Shape:
    """How one request's replies look: its id, creation time and model."""

    id: str
    created: int
    model: str
    chat: bool

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def reply(self, text: str, usage: Usage) -> dict[str, Any]:
        """The whole reply of a request that is not streamed."""
        reason = finish_reason(usage.finish_reason)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            out = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            out = self._head("text_completion")
        return {**out, "choices": [choice], "usage": usage_json(usage)}

    def chunk(self, text: str, reason: str | None = None, first: bool = False) -> bytes:
        """One server-sent event of a stream; `reason`: the engine's, on the last one."""
        finish = finish_reason(reason) if reason else None
        if self.chat:
            delta: dict[str, str] = {"role": "assistant"} if first else {}
            if text or not reason:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text}
            obj = "text_completion"
        choice.update(logprobs=None, finish_reason=finish)
        return event({**self._head(obj), "choices": [choice]})

    def usage_chunk(self, usage: Usage) -> bytes:
        """The stream's last event with stream_options.include_usage: no choices."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return event({**self._head(obj), "choices": [], "usage": usage_json(usage)})


def event(doc: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
