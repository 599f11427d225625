"""What the server under test serves, asked before a run starts: its models, version and
context length (``/v1/models``, ``/version``), which model to load, and how to count
prompt tokens (a local tokenizer when there is one, else the server's ``/tokenize``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadgen.config.prompts.tokenizers import LocalTokenizer, ServerTokenizer, Tokenizer
from loadgen.config.scenario import Scenario
from loadgen.errors import SpecloadError, describe_exception
from loadgen.http.base import auth_headers


@dataclass(frozen=True)
class ServerInfo:
    models: list[str]
    version: str | None
    max_model_len: int | None


async def probe_server(base_url: str, api_key: str | None = None) -> ServerInfo:
    """Ask the server what it serves; a clear one-line error if it can't be reached."""
    url = base_url.rstrip("/")
    async with httpx.AsyncClient(timeout=10.0, trust_env=False, headers=auth_headers(api_key)) as c:
        try:
            r = await c.get(url + "/v1/models")
        except httpx.HTTPError as e:
            raise SpecloadError(
                f"--base-url: cannot reach {url}: {describe_exception(e)}"
            ) from None
        if r.status_code != 200:
            raise SpecloadError(
                f"--base-url: {url}/v1/models answered HTTP {r.status_code}: {r.text[:200]}"
            )
        try:
            data = r.json()["data"]
            models = [m["id"] for m in data]
            mml = next((m.get("max_model_len") for m in data if m.get("max_model_len")), None)
        except (ValueError, KeyError, TypeError):
            raise SpecloadError(
                f"--base-url: {url}/v1/models is not an OpenAI model list"
            ) from None
        version = None
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            v = await c.get(url + "/version")
            if v.status_code == 200:
                version = v.json().get("version")
    return ServerInfo(models=models, version=version, max_model_len=mml)


def resolve_model(requested: str | None, served: list[str], base_url: str) -> str:
    """The model to load: the one asked for (it must be served), else the only one served."""
    if requested:
        if requested not in served:
            raise SpecloadError(
                f"--model: '{requested}' is not served by {base_url} (served: {', '.join(served)})"
            )
        return requested
    if len(served) == 1:
        return served[0]
    if not served:
        raise SpecloadError(f"--model: {base_url} serves no model")
    raise SpecloadError(f"--model: {base_url} serves several models, pick one: {', '.join(served)}")


def make_tokenizer(
    scenario: Scenario, base_url: str, model: str, api_key: str | None, tdir: str | None = None
) -> Tokenizer:
    """The prompts' tokenizer: a local directory when we have one, else the server's."""
    tdir = scenario.prompts.tokenizer or tdir
    if tdir is None and Path(model, "tokenizer.json").is_file():
        tdir = model  # vLLM names a model served from a directory by its path
    if tdir is not None:
        return LocalTokenizer(tdir)
    client = httpx.Client(timeout=30.0, trust_env=False, headers=auth_headers(api_key))
    return ServerTokenizer(base_url, model, client)
