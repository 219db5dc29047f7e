"""Run one factory datasite: `python -m federation.datasite --name ... --port ... --data ...`."""

import sys

from federation.datasite.cli import datasite_main

raise SystemExit(datasite_main(sys.argv[1:]))
