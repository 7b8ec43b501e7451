"""Committed notebooks carry no machine's absolute paths (clean them with scripts/clean_notebook_outputs.py)."""

import re

import pytest

from .conftest import REPO_ROOT

ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:home|root|work|tmp|Users|opt)/[\w.-]+")


@pytest.mark.parametrize("notebook", sorted((REPO_ROOT / "notebooks").glob("*.ipynb")), ids=lambda path: path.name)
def test_committed_notebook_has_no_absolute_paths(notebook) -> None:
    text = notebook.read_text()
    assert str(REPO_ROOT) not in text
    assert "site-packages" not in text, f"{notebook.name} shows a library warning: run the cleaning script"
    found = ABSOLUTE_PATH.findall(text)
    assert not found, (
        f"{notebook.name} names machine paths {sorted(set(found))[:5]}: run scripts/clean_notebook_outputs.py"
    )
