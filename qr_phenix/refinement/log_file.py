"""The program log: everything printed goes to the screen and <prefix>.log."""

import os


class Tee:
    """File-like object writing to the program's logger and a log file.

    The file is line-buffered and flushed at every line, so a crash or Ctrl-C
    leaves a complete log of all finished cycles.
    """

    def __init__(self, stream, path, append=False):
        self.stream = stream
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "a" if append else "w", buffering=1)

    def write(self, text):
        if self.stream is not None:
            self.stream.write(text)
        self.file.write(text)
        return len(text)

    def flush(self):
        if self.stream is not None and hasattr(self.stream, "flush"):
            self.stream.flush()
        self.file.flush()

    def close(self):
        self.file.close()
