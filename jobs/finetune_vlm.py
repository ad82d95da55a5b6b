"""Entry point for ``ray job submit -- python jobs/finetune_vlm.py --data URI --bundle URI [--base PATH] [...]``."""
import sys

from reasonrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune-vlm", *sys.argv[1:]]))
