"""``python -m ukd.gpu_check OUT_DIR``: see :mod:`ukd.gpu_check.cli`."""

from ukd.gpu_check.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
