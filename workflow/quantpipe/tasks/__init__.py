"""Tasks: one problem each behind quantpipe.tasks.base's interface. `spec(name)` gives a task's
torch-free facts (the Snakefile's), `load(name)` its implementation (the stages'). A name is a
built-in task or a user's "package.module:ATTRIBUTE" naming a TaskSpec."""

import importlib

from quantpipe.tasks.base import Task, TaskSpec

BUILTIN = {
    "cifar10": "quantpipe.tasks.cifar10.spec:SPEC",
    "isbi2012_em": "quantpipe.tasks.isbi2012_em.spec:SPEC",
    "images": "quantpipe.tasks.images.spec:SPEC",
}
DEFAULT = "cifar10"


class TaskReferenceError(ValueError):
    """A task name that is neither built-in nor a reference that imports to a TaskSpec."""


def _resolve(reference: str, what: str):
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise TaskReferenceError(
            f"{what} {reference!r} is not a built-in task ({', '.join(BUILTIN)}) nor a reference "
            "'package.module:ATTRIBUTE'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise TaskReferenceError(
            f"{what} {reference!r}: module {error.name!r} not found. Install the package that "
            "holds it (pip install -e PATH) or add its folder to PYTHONPATH"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise TaskReferenceError(
            f"{what} {reference!r}: module {module_name!r} ({module.__file__}) has no {attribute!r}"
        ) from None


def spec(name: str | None = None) -> TaskSpec:
    """The TaskSpec of task `name` (built-in, or "package.module:ATTRIBUTE")."""
    name = name or DEFAULT
    found = _resolve(BUILTIN.get(name, name), "task")
    if not isinstance(found, TaskSpec):
        raise TaskReferenceError(
            f"task {name!r} is a {type(found).__name__}, not a quantpipe.tasks.base.TaskSpec"
        )
    return found


def load(name: str | None = None) -> Task:
    """Task `name`'s implementation, ready for the stages to call."""
    task_spec = spec(name)
    implementation = _resolve(task_spec.implementation, f"task {task_spec.name!r}'s implementation")
    if not (isinstance(implementation, type) and issubclass(implementation, Task)):
        raise TaskReferenceError(
            f"{task_spec.implementation!r} (task {task_spec.name!r}) is not a subclass of "
            "quantpipe.tasks.base.Task"
        )
    return implementation(task_spec)
