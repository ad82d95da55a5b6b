"""Entry point for ``ray job submit -- python jobs/evaluate.py --data URI --bundle URI --task T [--json OUT]``."""
import sys

from reasonrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
