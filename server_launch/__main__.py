"""``python -m server_launch``."""

from server_launch.cli import main

raise SystemExit(main())
