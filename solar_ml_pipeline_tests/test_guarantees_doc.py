"""The README's Guarantees section and the tests it cites match one to one."""

import re
from pathlib import Path

TESTS = Path(__file__).parent
README = TESTS.parent / "README.md"
CITED = re.compile(r"`((?:R/)?[\w/]+\.py)::(test_\w+)`")


def _guarantees() -> str:
    text = README.read_text()
    start = text.index("\n## Guarantees\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _cited() -> list[tuple[Path, str]]:
    return [(TESTS / path.replace("R/", "reliability/", 1), name)
            for path, name in CITED.findall(_guarantees())]


def test_every_cited_test_exists():
    cited = _cited()
    assert len(cited) > 30
    missing = [f"{path.relative_to(TESTS)}::{name}" for path, name in cited
               if not path.is_file() or not re.search(rf"^def {name}\(", path.read_text(), re.M)]
    assert missing == []


def test_every_reliability_test_proves_a_cited_promise():
    cited = set(_cited())
    uncited = [f"{path.name}::{name}" for path in sorted((TESTS / "reliability").glob("test_*.py"))
               for name in re.findall(r"^def (test_\w+)\(", path.read_text(), re.M)
               if (path, name) not in cited]
    assert uncited == []
