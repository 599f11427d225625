"""The JSON the mock answers with, byte for byte what vLLM 0.32 emits.

vLLM builds these with pydantic's ``model_dump_json``, so the field order and the
``null`` fields below are theirs, for completions and chat alike (chat's first streamed
event carries ``role: assistant``). The streamed events are assembled from fixed pieces
per request (:func:`stream_pieces`), because the per-chunk loop must stay cheap.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, NamedTuple

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    411: "LengthRequired",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(status: int, message: str) -> bytes:
    """vLLM's ErrorResponse JSON."""
    err = {
        "message": message,
        "type": _ERROR_TYPES.get(status, HTTPStatus(status).phrase),
        "param": None,
        "code": status,
    }
    return _dumps({"error": err})


def models_body(model: str, created: int, max_model_len: int) -> bytes:
    """``/v1/models``: the one served model's card."""
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [],
    }
    return _dumps({"object": "list", "data": [card]})


def usage_json(prompt: int, completion: int) -> str:
    """vLLM's UsageInfo JSON (field order included) for streamed chunks."""
    total = prompt + completion
    return f'{{"prompt_tokens":{prompt},"total_tokens":{total},"completion_tokens":{completion}}}'


def completion_body(
    *,
    chat: bool,
    request_id: str | int,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    with_usage: bool,
) -> bytes:
    """A non-streamed completion (``/v1/completions``) or chat completion."""
    p, total = prompt_tokens, completion_tokens
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
        rid, obj = f"chatcmpl-{request_id}", "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        rid, obj = f"cmpl-{request_id}", "text_completion"
    resp: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
    }
    if with_usage:
        resp["usage"] = {
            "prompt_tokens": p,
            "total_tokens": p + total,
            "completion_tokens": total,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
    return _dumps(resp)


class StreamPieces(NamedTuple):
    """The fixed parts of one request's streamed events.

    A text event is ``body_open + text + mid_open + finish + mid_close``, then
    ``,"usage":...`` when usage is continuous, then ``}``; ``finish`` is ``fin_open`` on
    every event but the last.
    """

    pre: str  # '{"id":...,"choices":' : how every event starts
    role: str  # chat's first event (role: assistant), complete; "" for completions
    body_open: str
    mid_open: str
    fin_open: str
    mid_close: str


def stream_pieces(
    *,
    chat: bool,
    request_id: str | int,
    created: int,
    model: str,
    prompt_tokens: int,
    continuous: bool,
) -> StreamPieces:
    """The pieces for one request (``continuous``: usage on every event)."""
    model_json = json.dumps(model)
    if chat:
        pre = (
            f'{{"id":"chatcmpl-{request_id}","object":"chat.completion.chunk",'
            f'"created":{created},"model":{model_json},"choices":'
        )
        role = pre + '[{"index":0,"delta":{"role":"assistant","content":""},'
        role += '"logprobs":null,"finish_reason":null}]'
        if continuous:
            role += ',"usage":' + usage_json(prompt_tokens, 0)
        role += ',"prompt_token_ids":null,"prompt_text":null}'
        return StreamPieces(
            pre=pre,
            role=role,
            body_open=pre + '[{"index":0,"delta":{"content":"',
            mid_open='"},"logprobs":null,"finish_reason":',
            fin_open="null",  # chat sets stop_reason only on the finishing chunk
            mid_close=',"token_ids":null}]',
        )
    pre = (
        f'{{"id":"cmpl-{request_id}","object":"text_completion",'
        f'"created":{created},"model":{model_json},"choices":'
    )
    return StreamPieces(
        pre=pre,
        role="",
        body_open=pre + '[{"index":0,"text":"',
        mid_open='","logprobs":null,"finish_reason":',
        fin_open='null,"stop_reason":null',
        mid_close=',"prompt_token_ids":null,"token_ids":null}]',
    )
