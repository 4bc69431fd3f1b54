"""Ids unique across processes without a system call each (``uuid4`` reads the kernel's random
source every time): a random prefix per process, then a counter. A forked child draws its own
prefix; a spawned one imports anew."""

from __future__ import annotations

import itertools
import os


class ProcessIds:
    """``<16 hex: this process's prefix><counter: width hex digits, wrapping>``."""

    def __init__(self, width: int = 16) -> None:
        self._width = width
        self._mask = (1 << (4 * width)) - 1
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count) & self._mask:0{self._width}x}"
