"""What the server under test serves, asked before a run starts: its models, version and
context length (``/v1/models``, ``/version``), which model to load, and how to count
prompt tokens (a local tokenizer when there is one, else the server's ``/tokenize``)."""

from __future__ import annotations

import asyncio
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
            hint = ""
            if url.startswith("https://") and await _speaks_plain_http(url):
                hint = " (the server speaks plain HTTP, not TLS: use http://)"
            raise SpecloadError(
                f"--base-url: cannot reach {url}: {describe_exception(e)}{hint}"
            ) from None
        if r.status_code != 200:
            raise SpecloadError(
                f"--base-url: {url}/v1/models answered HTTP {r.status_code}: {r.text[:200]}"
            )
        models, mml = _model_list(r, url)
        version = None
        with contextlib.suppress(httpx.HTTPError):
            v = await c.get(url + "/version")
            if v.status_code == 200:
                version = _version(v)
    return ServerInfo(models=models, version=version, max_model_len=mml)


def _model_list(r: httpx.Response, url: str) -> tuple[list[str], int | None]:
    """The served model ids and a max_model_len from /v1/models, every field checked:
    whatever else a server answers (HTML, another shape, an id that is not a string) is
    one line naming the endpoint."""
    try:
        data = r.json()["data"]
        ids = [m["id"] for m in data]
        lens = [m.get("max_model_len") for m in data]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SpecloadError(f"--base-url: {url}/v1/models is not an OpenAI model list") from None
    bad = [i for i in ids if not isinstance(i, str) or not i]
    if bad:
        raise SpecloadError(
            f"--base-url: {url}/v1/models is not an OpenAI model list (a model id is "
            f"{bad[0]!r}, not a name)"
        )
    mml = next((n for n in lens if type(n) is int and n > 0), None)
    return ids, mml


def _version(v: httpx.Response) -> str | None:
    """vLLM's ``/version``; None for anything else (it is only recorded)."""
    try:
        doc = v.json()
    except ValueError:
        return None
    ver = doc.get("version") if isinstance(doc, dict) else None
    return ver if isinstance(ver, str) else None


async def _speaks_plain_http(url: str) -> bool:
    """Whether the https:// server at ``url`` answers plain HTTP (the user meant http://):
    one GET without TLS, a second at most."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection(u.hostname, u.port or 443)
            try:
                writer.write(b"GET /v1/models HTTP/1.0\r\nhost: x\r\n\r\n")
                first = await reader.read(5)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return first == b"HTTP/"


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
