"""``python -m loadgen.mock``: the mock OpenAI server (see loadgen.mock.cli)."""

import sys

from loadgen.mock.cli import main

sys.exit(main())
