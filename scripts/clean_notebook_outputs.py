"""Remove machine-specific paths from executed notebooks before they are committed.

Warnings on stderr, and library warnings rendered as display output (both name the site-packages
folder), are dropped, and
the repository's absolute path in the remaining outputs becomes a relative one.

Usage: ``python scripts/clean_notebook_outputs.py notebooks/*.ipynb``
"""

import json
import re
import sys
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
_ABSOLUTE_REPO = re.compile(re.escape(str(REPO_ROOT)) + "/?")


def clean(path: Path) -> int:
    """Clean one notebook in place; return how many outputs were dropped."""
    notebook = nbformat.read(path, as_version=4)
    dropped = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                dropped += 1
                continue
            if "site-packages" in json.dumps(output):  # a library warning rendered as rich display output
                dropped += 1
                continue
            if "text" in output:
                output["text"] = _ABSOLUTE_REPO.sub("", output["text"])
            for key, value in output.get("data", {}).items():
                if key.startswith("text/") and isinstance(value, str):
                    output["data"][key] = _ABSOLUTE_REPO.sub("", value)
            kept.append(output)
        cell["outputs"] = kept
    nbformat.write(notebook, path)
    return dropped


def main(paths: list[str]) -> None:
    """Clean every notebook named on the command line."""
    for name in paths:
        print(f"{name}: dropped {clean(Path(name))} warning outputs")


if __name__ == "__main__":
    main(sys.argv[1:])
