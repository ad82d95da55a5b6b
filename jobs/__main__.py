"""``python -m jobs VERB ...``: the ``reasonrec`` command without its console script."""
import sys

from jobs.cli import main

sys.exit(main())
