"""Entry point for ``ray job submit -- python jobs/train_tools.py --data URI --bundle URI [...]``."""
import sys

from reasonrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-tools", *sys.argv[1:]]))
