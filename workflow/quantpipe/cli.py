"""Run any stage by hand, without Snakemake or submitit: `quantpipe STAGE --FILE PATH ...`.

Each stage's `run()` takes file paths and one plain config dict; this maps its parameters to
options, e.g. `quantpipe train --data resources/cifar-10-batches-py --model m.pt --metrics m.json
--config train.yaml`. The config file is YAML or JSON holding that stage's config dict.

Tools that are not pipeline stages have their own options: `quantpipe compare` (quantpipe.compare)
measures every FP32 and INT8 runtime of one trained model side by side.
"""

import argparse
import importlib
import inspect
import json
import sys

import yaml

from quantpipe import inductor_cache
from quantpipe.submit import STAGES, log

TOOLS = ("compare",)  # modules with their own main(argv)


def _parser(stage: str, run) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"quantpipe {stage}", description=inspect.getdoc(run))
    for name, parameter in inspect.signature(run).parameters.items():
        if name == "log":
            continue
        if name == "config":
            parser.add_argument("--config", required=True, help="YAML or JSON file with the config")
            continue
        many = "list" in str(parameter.annotation)
        parser.add_argument(
            f"--{name}",
            nargs="+" if many else None,
            required=parameter.default is inspect.Parameter.empty,
            help="paths" if many else "path",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with inductor_cache.private():
        return _run(argv)


def _run(argv: list[str]) -> int:
    if argv and argv[0] in TOOLS:
        return importlib.import_module(f"quantpipe.{argv[0]}").main(argv[1:])
    if not argv or argv[0] not in STAGES:
        print(
            f"usage: quantpipe {{{','.join(STAGES + TOOLS)}}} [options]  "
            "(-h after a command for its options)"
        )
        return 2
    stage, rest = argv[0], argv[1:]
    run = importlib.import_module(f"quantpipe.stages.{stage}").run
    arguments = vars(_parser(stage, run).parse_args(rest))
    if "config" in arguments:
        with open(arguments["config"]) as handle:
            arguments["config"] = yaml.safe_load(handle)
    result = run(**{k: v for k, v in arguments.items() if v is not None}, log=log)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, default=str)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
