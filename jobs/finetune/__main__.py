"""`python -m jobs.finetune ARGS` = `bertpipe finetune ARGS` (what Ray jobs run)."""
import sys

from jobs.cli import main

sys.exit(main(["finetune", *sys.argv[1:]]))
