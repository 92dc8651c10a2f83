"""A user module that exists but cannot be imported: it needs a package that is not installed."""

import quantpipe_test_absent_dependency  # noqa: F401


def make_net(num_classes: int):
    raise AssertionError("never reached: the import above fails")
