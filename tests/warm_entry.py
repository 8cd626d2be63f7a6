"""A stand-in program for the warm-start tests: reports what it was started with."""

from __future__ import annotations

import json
import os
import sys
import time

#: The process that imported this module: the zygote when preloaded, else the program itself.
IMPORTED_IN = os.getpid()


def main() -> None:
    """Print argv, working folder, one environment variable and where this module was imported."""
    print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": os.environ.get("WARM_TEST"),
                      "pid": os.getpid(), "imported_in": IMPORTED_IN}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if os.environ.get("WARM_SLEEP"):
        time.sleep(float(os.environ["WARM_SLEEP"]))
    sys.exit(int(os.environ.get("WARM_EXIT", "0")))
