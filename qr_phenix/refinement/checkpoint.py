"""Per-cycle checkpoints.

After each macro-cycle the coordinates and the refinement state are saved
(atomically, qr_phenix/files.py); `resume=True` continues from the last
finished cycle, so an engine crash or Ctrl-C loses at most the cycle in
progress.
"""

import hashlib
import json
import os

import numpy as np

from qr_phenix.files import atomic_write_json


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
