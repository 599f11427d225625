"""A mock of vLLM's OpenAI-compatible streaming server, with exact ground-truth timing.

``python -m loadgen.mock --help`` runs it. One module per concept:

- ``config``: :class:`MockConfig`, one field per flag, checked once;
- ``cli``: the flags, ``main``;
- ``server``: :class:`MockServer`, the connection loop, routes and the streaming schedule;
- ``chunks``: tokens per chunk (``--tokens-per-chunk``) and the absolute chunk schedule;
- ``faults``: the faults it injects on demand (rates, ``x-mock-fault``);
- ``tokens``: its word tokenizer (output token ``i`` is the word ``w<i>``);
- ``responses``: the JSON bodies and stream events, as vLLM writes them;
- ``http11``: reading requests, writing response heads and SSE chunks;
- ``prometheus``: ``/metrics`` in vLLM's metric names;
- ``process``: start and stop it in a subprocess (tests, benchmarks).

It imports nothing from the rest of ``loadgen`` but ``loadgen.errors``, so it can stand
in for a server in any test without pulling in the client it is testing.
"""
