"""``python -m loadgen.mock``: the mock OpenAI server (see loadgen.mock.server)."""

import sys

from loadgen.mock.server import main

sys.exit(main())
