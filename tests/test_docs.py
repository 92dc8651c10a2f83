"""Every shell command in the README and the manual (docs/*.md) is checked, so no page goes stale.

The commands are read from the pages' ```bash blocks (backslash continuations joined, comments
dropped, `a && b` split, `eval "$(...)"` opened, leading VAR=value kept as the command's
environment). KINDS says how each kind of command is checked; a command no kind recognises fails
`test_every_command_is_recognised`. The fast checks (files, tiers, subcommands, `--help` and its
options) are unmarked; Snakemake commands also run as dry-runs (`-n`) in one copy of the
repository (marked `workflow`).
"""

import functools
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO
from workflowtools import SNAKEMAKE, copy_repository, node_class_profile, user_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
PEERS = all(importlib.util.find_spec(name) for name in ("onnxruntime", "openvino", "nncf"))


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.argv)}"


def bash_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each ```bash block of a Markdown page."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = line.strip()
        if current is None and re.fullmatch(r"```\s*(bash|sh|shell|console)\s*", fence):
            current, start = [], number + 1
        elif current is not None and fence.startswith("```"):
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{path.name}: a ```bash block is not closed"
    return blocks


def split_commands(text: str) -> list[tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]:
    """The simple commands of one logical shell line, each as (argv, environment)."""
    words = shlex.split(text, comments=True)
    if len(words) == 2 and words[0] == "eval":  # eval "$(command)"
        inner = re.fullmatch(r"\$\((.*)\)", words[1], re.DOTALL)
        assert inner, f"eval of something other than $(command): {text}"
        return split_commands(inner[1])
    found, current = [], []
    for word in [*words, "&&"]:
        if word in ("&&", "||", ";", "|"):
            if current:
                env = []
                while current and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", current[0]):
                    env.append(tuple(current.pop(0).split("=", 1)))
                found.append((tuple(current), tuple(env)))
            current = []
        else:
            current.append(word)
    return found


def page_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        for start, lines in bash_blocks(page):
            logical, first = "", start
            for number, line in enumerate(lines, start):
                if not logical:
                    first = number
                logical += line[:-1] + " " if line.endswith("\\") else line
                if line.endswith("\\"):
                    continue
                for argv, env in split_commands(logical):
                    commands.append(Command(str(page.relative_to(REPO)), first, argv, env))
                logical = ""
    return commands


COMMANDS = page_commands()


# -- what each kind of command must satisfy ---------------------------------------------------


def run(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=user_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@functools.cache
def tiers() -> set[str]:
    """The tiers tests/run.sh takes: its `case "${1:-}" in fast | full | gpu)` line."""
    found = re.search(r'case "\$\{1:-\}" in ([\w |-]+)\)', (REPO / "tests/run.sh").read_text())
    assert found, "tests/run.sh names no tiers"
    return {tier.strip() for tier in found[1].split("|")}


@functools.cache
def local_slurm_commands() -> set[str]:
    """The commands local_slurm.sh accepts: the first `case $cmd in` arm of its main."""
    text = (REPO / "workflow/scripts/local_slurm.sh").read_text()
    found = re.search(r"case \$cmd in\s+([\w |-]+)\) ;;", text)
    assert found, "local_slurm.sh: its command list was not found"
    return {name.strip() for name in found[1].split("|")}


@functools.cache
def ci_lines() -> set[str]:
    return {line.strip() for line in (REPO / ".ci/run").read_text().splitlines()}


@functools.cache
def help_text(*argv: str) -> str:
    done = run(*argv, "--help")
    assert done.returncode == 0, f"{shlex.join(argv)} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def options_in_help(command: Command, argv: tuple[str, ...], words: tuple[str, ...]) -> None:
    """Each --option the page gives appears in the help of `argv`."""
    text = help_text(*argv)
    unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in text]
    assert not unknown, f"{command}: {unknown} not among the options of {shlex.join(argv)}"


def exists(command: Command, path: str) -> None:
    assert (REPO / path).exists(), f"{command}: {path} does not exist"


def check_bootstrap(command: Command) -> None:
    exists(command, command.argv[1])


def check_tier(command: Command) -> None:
    exists(command, "tests/run.sh")
    rest = command.argv[2:]
    if rest and not rest[0].startswith("-"):
        assert rest[0] in tiers(), f"{command}: tier {rest[0]!r} is not one of {sorted(tiers())}"


def check_local_slurm(command: Command) -> None:
    exists(command, command.argv[1])
    assert command.argv[2:3] and command.argv[2] in local_slurm_commands(), (
        f"{command}: local_slurm.sh takes {sorted(local_slurm_commands())}"
    )


def check_activate(command: Command) -> None:
    assert command.argv[1] == ".venv/bin/activate", f"{command}: activate the checkout's .venv"
    assert (BIN / "activate").exists(), f"{command}: {BIN}/activate is missing"


def check_ci(command: Command) -> None:
    """The lint commands are what CI runs: each is a line of .ci/run."""
    assert shlex.join(command.argv) in ci_lines(), f"{command}: not a line of .ci/run"


def check_pytest(command: Command) -> None:
    for word in command.argv[1:]:
        if word.startswith("tests/"):
            exists(command, word.split("::")[0])


def check_pip_extra(command: Command) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for word in command.argv:
        found = re.fullmatch(r"\.\[(\w+)\]", word)
        if found:
            assert found[1] in extras, f"{command}: no extra {found[1]!r} in pyproject.toml"
            return
    pytest.fail(f"{command}: only `pip install -e .[extra]` is recognised")


def check_quantpipe(command: Command) -> None:
    """`quantpipe STAGE ...`: the stage exists and takes every option the page gives."""
    stage = command.argv[1]
    options_in_help(command, (str(BIN / "quantpipe"), stage), command.argv[2:])


def check_script(command: Command) -> None:
    """`.venv/bin/python workflow/scripts/X.py ...`: the script exists and takes the options (a
    subcommand's, where the page names one)."""
    script = command.argv[1]
    exists(command, script)
    argv = (sys.executable, script)
    rest = command.argv[2:]
    usage = help_text(*argv)
    if rest and re.search(r"\{[\w,-]*\b" + re.escape(rest[0]) + r"\b[\w,-]*\}", usage):
        argv, rest = (*argv, rest[0]), rest[1:]
    options_in_help(command, argv, rest)


def check_snakemake(command: Command) -> None:
    """The profile and config files exist, and the options are Snakemake's (the dry-run itself:
    test_snakemake_commands_dry_run)."""
    argv = command.argv
    for flag in ("--profile", "--configfile"):
        if flag in argv:
            for value in argv[argv.index(flag) + 1 :]:
                if value.startswith("-"):
                    break
                exists(command, value)
    flags = tuple(word for word in argv[1:] if word.startswith("--"))
    options_in_help(command, (SNAKEMAKE,), flags)


def is_python(word: str) -> bool:
    return Path(word).name in ("python", "python3")


# How each command is checked: (kind, recognises argv, check). The first kind that recognises a
# command checks it.
# fmt: off
KINDS = [
    ("bootstrap", lambda a: a == ("bash", "workflow/scripts/bootstrap.sh"), check_bootstrap),
    ("test tier", lambda a: a[:2] == ("bash", "tests/run.sh"), check_tier),
    ("local Slurm", lambda a: a[:2] == ("bash", "workflow/scripts/local_slurm.sh"),
     check_local_slurm),
    ("venv", lambda a: a[0] in ("source", "."), check_activate),
    ("CI check", lambda a: Path(a[0]).name in ("ruff", "snakefmt", "lint-imports")
     or (Path(a[0]).name == "snakemake" and "--lint" in a), check_ci),
    ("pytest", lambda a: Path(a[0]).name == "pytest", check_pytest),
    ("pip extra", lambda a: Path(a[0]).name == "pip" and "install" in a, check_pip_extra),
    ("quantpipe", lambda a: Path(a[0]).name == "quantpipe" and len(a) > 1, check_quantpipe),
    ("script", lambda a: is_python(a[0]) and a[1:2] != () and a[1].startswith("workflow/scripts/"),
     check_script),
    ("snakemake", lambda a: Path(a[0]).name == "snakemake", check_snakemake),
]
# fmt: on


def kind_of(command: Command) -> str | None:
    for name, recognises, _ in KINDS:
        if recognises(command.argv):
            return name
    return None


def test_the_pages_give_commands():
    pages = {command.page for command in COMMANDS}
    assert "README.md" in pages and len(COMMANDS) >= 10, sorted(pages)
    readme = [shlex.join(c.argv) for c in COMMANDS if c.page == "README.md"]
    for exact in (
        "bash workflow/scripts/bootstrap.sh",
        ".venv/bin/snakemake --profile profiles/local",
        "bash tests/run.sh",
        "bash tests/run.sh fast",
    ):
        assert exact in readme, f"the README no longer gives `{exact}`"


def test_the_parser_reads_shell_as_written():
    assert split_commands("A=1 B=x y --z 'a b' && eval \"$(w v)\" # note") == [
        (("y", "--z", "a b"), (("A", "1"), ("B", "x"))),
        (("eval", "$(w v)"), ()),
    ]
    assert split_commands('eval "$(bash s.sh env)"') == [(("bash", "s.sh", "env"), ())]


def test_every_command_is_recognised():
    unknown = [str(command) for command in COMMANDS if kind_of(command) is None]
    assert not unknown, (
        "commands in the docs that tests/test_docs.py does not know how to check (add a kind to "
        "KINDS, or fix the page):\n" + "\n".join(unknown)
    )


# Kinds whose check starts a process that imports torch (--help): several seconds each.
RUNS_A_PROCESS = {"quantpipe", "script", "snakemake"}


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            command, marks=[pytest.mark.slow] if kind_of(command) in RUNS_A_PROCESS else []
        )
        for command in COMMANDS
    ],
    ids=str,
)
def test_command(command):
    for _, recognises, check in KINDS:
        if recognises(command.argv):
            check(command)
            return
    pytest.skip("not recognised: test_every_command_is_recognised fails for it")


def dry_run_argv(command: Command) -> list[str]:
    """The page's Snakemake command as a dry-run: `--report FILE` needs a finished run, so it is
    left out (its option is checked against Snakemake's help by test_command)."""
    argv = list(command.argv[1:])
    if "--report" in argv:
        at = argv.index("--report")
        del argv[at : at + 2]
    return [SNAKEMAKE, *argv, "--dry-run"]


@pytest.mark.workflow
def test_snakemake_commands_dry_run(tmp_path):
    """Every Snakemake command of the pages plans its DAG (`-n`) in one copy of the repository,
    with the environment the page gives it. Node classes a command names are mapped in the
    copy's Slurm profile first, as docs/slurm.md tells the user to."""
    copy_repository(tmp_path)
    runs = {}
    for command in COMMANDS:
        if kind_of(command) == "snakemake":
            runs.setdefault((tuple(dry_run_argv(command)), command.env), command)
    classes = set()
    for argv, _ in runs:
        for word in argv:
            if word.startswith("node_classes="):
                classes.update(re.findall(r"\w+", word.split("=", 1)[1]))
    if classes:
        node_class_profile(tmp_path, {name: ("cpu", "") for name in classes})
    failed = []
    for (argv, env), command in runs.items():
        done = subprocess.run(argv, cwd=tmp_path, env={**user_env(), **dict(env)},
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if done.returncode == 0:
            continue
        # Without the `peers` extra (the fast tier's venv) a command naming a peer method is
        # refused with the fix; tests/run.sh installs the extra before the workflow tests.
        if not PEERS and "from the optional `peers` extra" in done.stdout + done.stderr:
            continue
        failed.append(f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    assert not failed, "dry-runs that failed:\n\n" + "\n\n".join(failed)
