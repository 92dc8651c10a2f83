"""Tasks as plug-ins (quantpipe.tasks): the registry, a user's task by reference through the
Snakefile, and no stage that names a task."""

import re
import subprocess
from pathlib import Path

import pytest
from quantpipe import tasks
from workflowtools import SNAKEMAKE, copy_repository, user_env

ROOT = Path(__file__).resolve().parent.parent
USERPKG = Path(__file__).resolve().parent / "userpkg"


@pytest.fixture
def userpkg(monkeypatch):
    monkeypatch.syspath_prepend(str(USERPKG))


def test_builtin_tasks_load_with_their_specs():
    for name in tasks.BUILTIN:
        task = tasks.load(name)
        assert task.spec.name == name and task.spec is tasks.spec(name)
    assert tasks.spec(None).name == tasks.DEFAULT


def test_a_users_task_loads_by_reference(userpkg):
    task = tasks.load("usertasks:SPEC")
    assert type(task).__name__ == "UserCifar" and task.spec.name == "usercifar"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("mnist", "not a built-in task .* nor a reference 'package.module:ATTRIBUTE'"),
        ("nosuchpkg.tasks:SPEC", "module 'nosuchpkg' not found. Install the package"),
        ("usertasks:NOPE", "module 'usertasks' .* has no 'NOPE'"),
        ("usertasks:NOT_A_SPEC", "is a str, not a quantpipe.tasks.base.TaskSpec"),
        ("usertasks:BAD_IMPLEMENTATION", "is not a subclass of quantpipe.tasks.base.Task"),
    ],
)
def test_a_bad_task_reference_names_the_problem(userpkg, reference, message):
    with pytest.raises(tasks.TaskReferenceError, match=message):
        tasks.load(reference)


def test_no_stage_names_a_task():
    """Stages call the task interface; the task names live in the tasks only. A name that is
    also a word the stages use ("images") counts where it is a string literal."""
    quoted = re.compile("|".join(f"[\"']{re.escape(name)}[\"']" for name in tasks.BUILTIN))
    mentions = ["em.", "cifar", "isbi"]
    for path in [
        *sorted((ROOT / "workflow/quantpipe/stages").glob("*.py")),
        *sorted((ROOT / "workflow/rules").glob("*.smk")),
    ]:
        text = path.read_text().lower()
        named = [name for name in mentions if name in text] + quoted.findall(text)
        assert not named, (path.name, named)


@pytest.mark.slow
def test_the_dag_takes_a_users_task(tmp_path):
    """A dry run with `task: usertasks:SPEC`, in a copy of the checkout: the DAG's prepare_data
    writes the user task's record."""
    copy_repository(tmp_path)
    environment = {**user_env(), "PYTHONPATH": str(USERPKG)}
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--config", "task=usertasks:SPEC"],
        capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert "results/prepare_data/usercifar.json" in result.stdout
