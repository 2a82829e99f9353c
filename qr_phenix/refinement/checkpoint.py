"""Atomic output files and per-cycle checkpoints.

Nothing is ever half-written: every file goes to a temporary name in the
same directory and is renamed over the target (atomic on POSIX).  After each
macro-cycle the coordinates and the refinement state are saved; `resume=True`
continues from the last finished cycle, so an engine crash or Ctrl-C loses at
most the cycle in progress.
"""

import hashlib
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


def atomic_write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError("not JSON serialisable: %r" % type(x))


def fingerprint(*parts):
    """Short hash of inputs, to refuse resuming a different job."""
    h = hashlib.sha1()
    for p in parts:
        h.update(str(p).encode())
    return h.hexdigest()[:16]


class Checkpoint:
    """<prefix>.checkpoint.json: state + coordinates after the last finished cycle."""

    def __init__(self, prefix):
        self.path = prefix + ".checkpoint.json"

    def exists(self):
        return os.path.isfile(self.path)

    def save(self, state, sites_cart):
        data = dict(state)
        data["sites_cart"] = np.asarray(sites_cart, dtype=float).round(6).tolist()
        atomic_write_json(self.path, data)

    def load(self):
        with open(self.path) as f:
            data = json.load(f)
        sites = np.array(data.pop("sites_cart"), dtype=float)
        return data, sites

    def remove(self):
        if self.exists():
            os.unlink(self.path)
