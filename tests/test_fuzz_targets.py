"""Every reader and entry point that takes outside input, fuzzed with Hypothesis (issue 25): the
dataset formats, config files and overrides, vcap score's files, run logs and folders, index folders,
model folders' config.json and the web API's parameters (``benchmarks.fuzz`` holds the targets and
runs them longer: ``python -m benchmarks.fuzz --examples 2000``). The property of each: a correct
result, or one line ``vcap: <kind>: ...`` with the documented exit code - never a traceback, never
a result whose meaning changed. A bounded number of examples each, the same ones every run."""

from __future__ import annotations

import pytest

from benchmarks.fuzz import TARGETS, run_target
from benchmarks.fuzz_targets import Target


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_target_holds_its_property(target: Target):
    count, failures = run_target(target, target.examples, derandomize=True)
    assert not failures, "\n".join(failures)
    assert count >= target.examples + len(target.always)


def test_a_broken_property_is_reported_with_its_example():
    """The runner itself: a target whose property fails is reported, with the example that fails it."""
    from hypothesis import strategies as st

    def check(example: int, folder) -> None:
        assert example < 5, "too big"

    count, failures = run_target(Target("toy", st.integers(0, 100), check, always=(7,)), 50, derandomize=True)
    assert len(failures) == 2 and "always-run example 7" in failures[0] and "too big" in failures[0]
    assert "example=5" in failures[1].replace(" ", "").replace("\n", "") and count > 1
