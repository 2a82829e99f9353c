"""Files written atomically: to a temporary name in the target's directory,
then renamed over the target (atomic on POSIX), so a crash or Ctrl-C never
leaves a half-written file, and a reader sees the old file or the new one."""

import json
import os
import tempfile

import numpy as np


def atomic_write(path, text):
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj, indent=2):
    """JSON with numpy scalars and arrays as plain numbers and lists."""
    atomic_write(path, json.dumps(obj, indent=indent, sort_keys=False,
                                  default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError("not JSON serialisable: %r" % type(x))
