"""docs/optax_coverage.md stays true: every Optax name and every gradchain name, with its status.

The page is what a user porting from Optax reads first; these tests fail when a
name is added to either library without a row, when a row claims a name that
gradchain does not have (or has), and when the counts at the top drift.
"""

from __future__ import annotations

import pathlib
import re

import optax
import optax.contrib
import pytest

import gradchain as gc

PAGE = pathlib.Path(__file__).parent.parent / "docs" / "optax_coverage.md"
ROW = re.compile(r"^\| `(\w+)` \| (optax|optax\.contrib|gradchain) \| ([a-z ]+) \| (.*) \|$")
STATUSES = ("same numbers", "differs on purpose", "gradchain only", "not provided")
COUNTS = re.compile(
    r"(\d+) Optax names are provided: (\d+) give Optax's numbers and (\d+) differ on purpose; "
    r"(\d+) are not provided\. (\d+) names are gradchain's own\."
)


def _rows() -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for line in PAGE.read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, home, status, notes = match.groups()
            assert name not in rows, f"{name} has two rows"
            rows[name] = (home, status, notes)
    return rows


def _optax_names() -> dict[str, str]:
    """Optax's public functions and factories by name (losses are not an optimizer's)."""
    names = {}
    for home, module in (("optax.contrib", optax.contrib), ("optax", optax)):
        for name in dir(module):
            obj = getattr(module, name)
            loss = getattr(obj, "__module__", "").startswith("optax.losses")
            if name[0].islower() and callable(obj) and not loss:
                names[name] = home
    return names


ROWS = _rows()
OPTAX = _optax_names()
OURS = {name for name in gc.__all__ if name[0].islower()}


def test_every_optax_name_has_a_row_saying_where_it_lives() -> None:
    missing = sorted(set(OPTAX) - set(ROWS))
    assert not missing, f"add rows for {missing}"
    wrong = {n: (ROWS[n][0], home) for n, home in OPTAX.items() if ROWS[n][0] != home}
    assert not wrong, f"(row says, optax has): {wrong}"


def test_every_gradchain_name_has_a_row() -> None:
    assert not sorted(OURS - set(ROWS)), f"add rows for {sorted(OURS - set(ROWS))}"


@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_rows_status_matches_the_libraries(name: str) -> None:
    home, status, notes = ROWS[name]
    assert status in STATUSES
    if status == "gradchain only":
        assert home == "gradchain" and name in OURS and name not in OPTAX
    elif status == "not provided":
        assert name in OPTAX and name not in OURS and notes.strip(), "say why"
    else:  # every shared name is compared with Optax by tests/test_optax_parity.py's guard
        assert name in OPTAX and name in OURS
    if status == "differs on purpose":
        assert notes.strip(), "say how and why"


def test_the_counts_at_the_top_are_the_rows_counts() -> None:
    match = COUNTS.search(PAGE.read_text())
    assert match, "the page states its counts in the expected sentence"
    by_status = {s: sum(1 for _, st, _ in ROWS.values() if st == s) for s in STATUSES}
    provided = by_status["same numbers"] + by_status["differs on purpose"]
    expected = (
        provided,
        by_status["same numbers"],
        by_status["differs on purpose"],
        by_status["not provided"],
        by_status["gradchain only"],
    )
    assert tuple(int(g) for g in match.groups()) == expected
