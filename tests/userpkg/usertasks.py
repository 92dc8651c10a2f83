"""A task that exists only in the tests, outside quantpipe: CIFAR-10 under another name, to show a
user's task plugs in by reference (`task: usertasks:SPEC`)."""

import dataclasses

from quantpipe.tasks.cifar10.spec import SPEC as CIFAR10
from quantpipe.tasks.cifar10.task import Cifar10

SPEC = dataclasses.replace(CIFAR10, name="usercifar", implementation="usertasks:UserCifar")
NOT_A_SPEC = "a string"
BAD_IMPLEMENTATION = dataclasses.replace(CIFAR10, implementation="usertasks:NOT_A_SPEC")


class UserCifar(Cifar10):
    pass
