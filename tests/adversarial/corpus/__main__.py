"""`python3 -m corpus LANDING_DIR [OUTSIDE_DIR]` (from tests/adversarial/): write the corpus."""

import sys

from . import write

if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python3 -m corpus LANDING_DIR [OUTSIDE_DIR]")
    for case in write(sys.argv[1], outside=sys.argv[2] if len(sys.argv) == 3 else None):
        print(case.name, case.path)
