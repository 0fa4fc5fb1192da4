"""Files written by the code under test."""

import os


def relative_file_paths(folder):
    """The paths of every file under ``folder``, relative to it, sorted."""
    return sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, _, files in os.walk(folder)
        for f in files
    )
