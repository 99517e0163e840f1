"""``python -m asr ...``: the ``asr`` command (for an environment whose scripts are not on PATH)."""

from asr.cli import main

main()
