"""The settings of the trainer's tests: a few dozen Fashion-MNIST images, one thread, quiet (seconds per run)."""

TINY = [
    "data.train_subset=48",
    "data.test_subset=40",
    "data.batch_size=16",
    "data.eval_batch_size=40",
    "run.threads=1",
    "run.quiet=true",
    "optim.lr=0.02",
]
#: :data:`TINY` as ``--set`` command-line arguments.
TINY_ARGS = [a for s in TINY for a in ("--set", s)]
