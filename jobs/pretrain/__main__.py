"""`python -m jobs.pretrain ARGS` = `bertpipe pretrain ARGS` (what Ray jobs run)."""
import sys

from jobs.cli import main

sys.exit(main(["pretrain", *sys.argv[1:]]))
