"""One module per CLI command (``HELP``, ``add_arguments(parser)``, ``run(args) -> int``), and the
checks they share on output paths."""

from __future__ import annotations

import argparse
import os


def int_arg(lo: int):
    """An argparse ``type``: an integer >= ``lo``. A bad value is argparse's one-line error naming the flag
    (``argument --seed: expected an integer >= 0; got -1``), before any work is done."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}; got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}; got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def check_output_dir(path: str, flag: str = "--out") -> str:
    """A folder the command may write into: it exists as a folder or can be created (no file in the way,
    writable). Raises ValueError naming the flag, before any work is done."""
    p = os.path.abspath(path)
    probe = p
    while not os.path.exists(probe):  # the nearest existing ancestor decides
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(f"{flag} {path!r} is a file; give a folder")
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path!r} lies under {probe!r}, which is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: {probe!r} is not writable")
    return path


def check_output_file(path: str, flag: str = "--out") -> str:
    """A file the command may write (atomically): not a folder, and its folder can be made and written."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; give a file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)), flag=f"{flag} {path!r}: its folder")
    return path
