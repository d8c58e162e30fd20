"""The code blocks of docs/performance.md. The benchmark itself takes minutes and installs
benchmark-only packages, so it is not run here (tests/test_benchmark_quick.py runs its quick
mode): `make bench` is checked to do what the page's commands do, the benchmark's command line
to parse, and the recorded run's command to be one the benchmark accepts."""

from __future__ import annotations

import re
import subprocess
import sys

from .._docs import fenced_blocks
from .._servers import ROOT

PAGE = ROOT / "docs" / "performance.md"
BLOCKS = [b.code.strip() for b in fenced_blocks(PAGE)]

# How each block of the page that a test below checks begins.
CHECKED = {
    "bench": "make bench",
    "steps": "apt-get install",
    "recorded": "python -m benchmarks.serving",
    "paired": "python -m benchmarks.paired",
    "noop": "python -m benchmarks.noop",
    "coldstart": "python -m benchmarks.coldstart",
    "uploads": "python -m benchmarks.uploads",
    "jobs": "python -m benchmarks.jobs",
}


def block(key: str) -> str:
    """The one block of the page that begins as ``CHECKED[key]`` says."""
    found = [b for b in BLOCKS if b.startswith(CHECKED[key])]
    assert len(found) == 1, (key, found)
    return found[0]


def test_every_block_of_the_page_is_one_this_file_checks():
    assert all(b.lang == "" for b in fenced_blocks(PAGE))
    for code in BLOCKS:  # a new block needs a test here
        assert [k for k, start in CHECKED.items() if code.startswith(start)], code
    for key in CHECKED:
        block(key)


def bench_rule() -> str:
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^bench:.*?(?=^\S|\Z)", makefile, flags=re.M | re.S)
    assert rule is not None
    return rule.group(0)


def test_make_bench_is_a_rule_that_runs_the_page_s_three_steps():
    assert block("bench") == "make bench"
    rule = bench_rule()
    apt, pip, run = (line.split("#")[0].split() for line in block("steps").splitlines())
    assert apt[:3] == ["apt-get", "install", "-y"] and apt[3] in rule
    assert "apt-get install" in rule
    assert pip[0] == ".venv/bin/pip" and pip[1:] == ["install", "-r", pip[3]]
    assert f"-r {pip[3]}" in rule
    assert run[0] == ".venv/bin/python" and " ".join(run[1:]) in rule


def test_the_benchmark_only_requirements_are_the_ones_the_page_names():
    pip_line = block("steps").splitlines()[1]
    named = [n.strip() for n in pip_line.split("#")[1].split(",")]
    listed = [
        re.split(r"[=<>~!]", line)[0]
        for line in (ROOT / "benchmarks" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert named == listed
    lock = (ROOT / "constraints.txt").read_text().lower()
    for name in listed:  # benchmark-only: never in the lock
        assert not re.search(rf"^{name}==", lock, flags=re.M), name


def test_the_benchmark_s_command_line_and_the_recorded_run_s_options_parse():
    run = block("steps").splitlines()[2].split("#")[0].split()
    recorded = block("recorded").split()
    assert recorded[:3] == ["python", "-m", "benchmarks.serving"]
    assert run[1:] == recorded[1:3]
    for argv in ([], recorded[3:]):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.serving", *argv, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: ")


def test_the_side_by_side_command_names_servers_the_benchmark_knows():
    from benchmarks.paired import parse_arm

    command = block("paired").split()
    assert command[:3] == ["python", "-m", "benchmarks.paired"]
    servers = [arg for arg in command[3:] if not arg.startswith("-") and not arg.isdigit()]
    assert [parse_arm(spec).key for spec in servers] == ["mfk", "plain"]
    assert "--concurrency" in help_of(block("paired"))


def test_the_no_op_benchmark_s_command_runs_its_help():
    assert block("noop") == "python -m benchmarks.noop"
    assert "noop-mfk" in help_of(block("noop"))


def test_the_cold_start_benchmark_s_command_runs_its_help():
    assert block("coldstart") == "python -m benchmarks.coldstart"
    assert "--runs" in help_of(block("coldstart"))


def test_the_uploads_benchmark_s_command_runs_its_help():
    command = block("uploads").split()
    assert command[:3] == ["python", "-m", "benchmarks.uploads"]
    assert "--bentoml-python" in command and "--bentoml-python" in help_of(block("uploads"))


def test_the_jobs_benchmark_s_command_runs_its_help():
    assert block("jobs") == "python -m benchmarks.jobs"
    assert "--texts" in help_of(block("jobs"))


def help_of(command: str) -> str:
    """What ``command`` (a ``python -m ...`` line of the page) prints for ``--help``."""
    done = subprocess.run(
        [sys.executable, *command.split()[1:], "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
