"""Prompt sources: one module per source, each a registered class (see ``base``).

Importing this package registers every source; ``loadgen.config.scenario`` builds the
allowed values of ``prompts.source`` from the registry. A new source is one module here,
its line below, and its test.
"""

from loadgen.config.prompts import (  # noqa: F401  (registers each source)
    base_prompt,
    builtin,
    humaneval,
    instructcoder,
    jsonl,
    mt_bench,
    random_tokens,
    sharegpt,
    specbench,
    speed_bench,
)
