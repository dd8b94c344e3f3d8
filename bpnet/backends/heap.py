"""Keeping freed memory mapped between training steps (glibc's ``M_TOP_PAD``).

A step allocates its temporaries (each layer's output, dz, dx) and frees them
at its end.  glibc's ``free`` returns the top of its heap to the operating
system once more than its trim threshold is free there (twice the largest
array it has handed out lately), so the next step touches those pages anew,
and every 4 KiB page costs a page fault: 590 faults per step in the deep
64-(256x8)-10 net at batch 256 (256 KiB temporaries), about 1 ms of a 7 ms
step on the 2-core VM of the README's benchmark.  A loop of four 256 KiB,
2 MiB or 8 MiB NumPy arrays allocated and freed faults 56-507 times per
array.

``mallopt(M_TOP_PAD, 64 MiB)`` makes glibc keep 64 MiB at the top of the heap
when it trims (and grow it by as much when it must): the next step's
temporaries land on pages already mapped, with no faults, in all of those
cases.  The cost is that a process keeps up to 64 MiB more of freed memory
than before; its peak is unchanged.

Setting any of glibc's thresholds also freezes its *dynamic* mmap threshold
(the size from which an array gets its own ``mmap``, which glibc otherwise
raises to the largest mapped array freed so far, up to 32 MiB) at the value
it had at that moment: 128 KiB in a process that had freed no large array
yet.  Every larger array was then mapped, faulted in and unmapped again each
step, heap padding or not: a 1024x512 float32 temporary faulted all its 513
pages, and the MLP's step at batch 1024 took 15.8 ms instead of 11.8 ms
once a worker had run a smaller case first.  So the threshold is set too,
to 32 MiB, the largest glibc accepts and the value its own dynamic rule
would reach: arrays up to 32 MiB come from the heap, whatever ran before.

The numba backend, the one that runs for speed, sets both once when it is
first created.  ``BPNET_HEAP_PAD=0`` leaves malloc as it is, and so does a
malloc setting of the user's own (``MALLOC_TOP_PAD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_`` or ``glibc.malloc``
in ``GLIBC_TUNABLES``).  Elsewhere than on glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

from .switches import env_switch

TOP_PAD_BYTES = 64 << 20
MMAP_THRESHOLD_BYTES = 32 << 20
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3     # glibc's <malloc.h>
_USER_SETTINGS = ("MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def user_set_malloc() -> bool:
    """True where the environment already tunes glibc's malloc."""
    return any(k in os.environ for k in _USER_SETTINGS) or \
        "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


@functools.cache
def keep_heap_top() -> bool:
    """Ask glibc to keep :data:`TOP_PAD_BYTES` of freed heap mapped and to serve arrays up to
    :data:`MMAP_THRESHOLD_BYTES` from the heap; True where both were set."""
    if env_switch("BPNET_HEAP_PAD") == "off":
        return False
    if user_set_malloc() or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (_M_TOP_PAD, TOP_PAD_BYTES)))
