#!/usr/bin/env python3
"""Make the balanced Fashion-MNIST subset shipped in ``ukd/data/fashion_mnist_subset/``.

From the full IDX files (by default those of Debian's ``dataset-fashion-mnist``) it picks, with a fixed seed, the same
number of images of every class from each split, keeps them in their original order, and writes:

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  train-indices-idx1-int.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz   t10k-indices-idx1-int.gz
    NOTICE

The ``*-indices-*`` files hold, for each chosen image, its index in the full split (int32), so the subset can be checked
against the full set. Output is deterministic: the same inputs and options give byte-identical files.

Usage: python scripts/make_fashion_mnist_subset.py [--source-dir DIR] [--out-dir DIR] [--train-per-class N]
                                                   [--test-per-class N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ukd.data.fashion_mnist import (  # noqa: E402
    DEBIAN_FASHION_MNIST_DIR,
    EMBEDDED_INDEX_FILES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
)
from ukd.data.idx import read_idx, write_idx  # noqa: E402

NOTICE_TEMPLATE = """\
Fashion-MNIST subset
====================

The IDX files in this directory are a subset of Fashion-MNIST, a data set of Zalando's article images made by Zalando
Research (Han Xiao, Kashif Rasul, Roland Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747, 2017; https://github.com/zalandoresearch/fashion-mnist). Fashion-MNIST is
distributed under the MIT licence, reproduced below; the images and labels here are unchanged copies of the
original ones.

How this subset was made: scripts/make_fashion_mnist_subset.py of ukd, from the four standard IDX files (as installed
by Debian's package dataset-fashion-mnist), choosing with numpy.random.default_rng({seed}) {train_per_class} training
and {test_per_class} test images of each of the 10 classes without replacement, kept in their original order:
{n_train} training and {n_test} test images. train-indices-idx1-int.gz and t10k-indices-idx1-int.gz give each chosen
image's index in the full training (60000) and test (10000) split.

Licence of Fashion-MNIST
------------------------

The MIT License (MIT) Copyright © 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def choose_balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` items of every class (drawn without replacement), sorted increasing, int64."""
    chosen = []
    for cls in range(len(FASHION_MNIST_CLASSES)):
        candidates = np.flatnonzero(labels == cls)
        if candidates.size < per_class:
            raise SystemExit(f"class {cls} has only {candidates.size} images, {per_class} requested")
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-dir", type=Path, default=DEBIAN_FASHION_MNIST_DIR, help="full IDX files")
    parser.add_argument(
        "--out-dir", type=Path, default=REPO_ROOT / "ukd" / "data" / "fashion_mnist_subset", help="output directory"
    )
    parser.add_argument("--train-per-class", type=int, default=700)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=20240924)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        image_name, label_name = FASHION_MNIST_FILES[split]
        images = read_idx(args.source_dir / image_name, expected_magic=2051, expected_shape=(None, 28, 28))
        labels = read_idx(args.source_dir / label_name, expected_magic=2049, expected_shape=(images.shape[0],))
        index = choose_balanced(labels, per_class, rng)
        write_idx(args.out_dir / image_name, images[index])
        write_idx(args.out_dir / label_name, labels[index])
        write_idx(args.out_dir / EMBEDDED_INDEX_FILES[split], index.astype(np.int32))
        counts[split] = index.size
    notice = NOTICE_TEMPLATE.format(
        seed=args.seed,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        n_train=counts["train"],
        n_test=counts["test"],
    )
    (args.out_dir / "NOTICE").write_text(notice, encoding="utf-8")
    total = sum(p.stat().st_size for p in args.out_dir.iterdir() if p.is_file())
    for p in sorted(args.out_dir.iterdir()):
        print(f"{p.stat().st_size:>10}  {p}")
    print(f"{total:>10}  total ({counts['train']} train + {counts['test']} test images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
