"""What threads that spin while they wait cost when processes share the cores.

Starts --processes processes at once, each running --steps training steps of the width-8 CIFAR
ResNet18 on --threads threads, and prints each one's seconds. Run it twice, with OpenMP's default
(its threads spin a while before they sleep) and with them sleeping at once:

    .venv/bin/python workflow/scripts/thread_contention.py --processes 2
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python workflow/scripts/thread_contention.py --processes 2

tests/run.sh sets OMP_WAIT_POLICY=PASSIVE because its two workers, and the jobs they start, share
the cores (docs/development.md).
"""

import argparse
import multiprocessing
import os
import time


def steps(threads: int, count: int, start, seconds) -> None:
    import torch
    from quantpipe.models.build import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model("resnet18_cifar", 10, 8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    images, labels = torch.randn(100, 3, 32, 32), torch.randint(0, 10, (100,))
    start.wait()  # every process built its model: the timed steps begin together
    began = time.perf_counter()
    for _ in range(count):
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds.put(time.perf_counter() - began)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")  # each child loads OpenMP afresh
    start, seconds = context.Barrier(args.processes), context.Queue()
    children = [
        context.Process(target=steps, args=(args.threads, args.steps, start, seconds))
        for _ in range(args.processes)
    ]
    for child in children:
        child.start()
    taken = sorted(seconds.get() for _ in children)
    for child in children:
        child.join()
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (spin, then sleep)")
    print(f"OMP_WAIT_POLICY {policy}: {args.processes} processes x {args.threads} threads on "
          f"{len(os.sched_getaffinity(0))} CPUs, {args.steps} steps each: "
          f"{', '.join(f'{s:.2f}' for s in taken)} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
