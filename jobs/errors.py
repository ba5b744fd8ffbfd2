"""Turning user-caused errors into one clear line at the command line."""
from __future__ import annotations

import functools
import sys

from jobs.configargs import ConfigError
from pipeline.errors import InputError


def user_errors(fn):
    """Wrap a job's `main`: user errors print `bertpipe: ...` on stderr and return 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, InputError) as e:
            print(f"bertpipe: error: {e}", file=sys.stderr)
            return 2
    return wrapper
