"""`python -m failover.keeper`: the keeper process (see `failover.keeper.core`)."""

import os
import sys

from failover.keeper.core import main

if __name__ == "__main__":
    # Once its tree is gone the daemon waits for our exit before it releases leadership:
    # skip the interpreter's teardown (tens of ms on a busy host); all is closed already.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
