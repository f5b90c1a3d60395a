"""The README is the front door: its example runs and its test command is CI's."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_example_runs_and_fits(capsys: pytest.CaptureFixture[str]):
    (example,) = _blocks("python")
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    printed = float(capsys.readouterr().out.strip())
    assert 0.0 <= printed <= 0.05  # the warmup-cosine schedule's value at step 300
    final = namespace["loss"](namespace["params"], namespace["x"], namespace["y"])  # type: ignore[operator]
    assert float(final) < 1e-2


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    (command,) = [b for b in _blocks("bash") if "python -m pytest" in b]
    install, run = command.strip().split(" && ")
    assert install in ci
    assert run in ci


def test_the_feature_table_names_every_public_function_with_a_status():
    import gradchain as gc

    features = README.split("\n## Features\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in features.splitlines() if line.startswith("| ")]
    statuses = {row.split(" | ")[-2] for row in rows[2:]}  # below the header and its rule
    assert statuses <= {"done", "planned"}, statuses
    done = "\n".join(row for row in rows if row.split(" | ")[-2] == "done")
    public = [name for name in gc.__all__ if name[0].islower()]
    missing = [name for name in public if not re.search(rf"`{name}[`(]", done)]
    assert not missing, f"add to the README's feature table: {missing}"
