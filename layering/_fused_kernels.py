"""The compiled kernels of :mod:`.fused` (imported only where numba is installed).

Module-level functions, so numba caches their machine code on disk: compiling them takes
a few seconds, loading them a few milliseconds.
"""

# mypy: ignore-errors
# numba compiles these; their arguments are numpy arrays and tuples of ints.

import numba
import numpy as np

JIT = {"nogil": True, "cache": True, "boundscheck": False, "error_model": "numpy"}


@numba.njit(**JIT)
def block(flat, bits, mask, digits, shifts, widths, limit, scale, start, stop):
    # Local views indexed from 0 and the partition as tuples (values, not memory that
    # the digits' stores might alias): the loop vectorizes, the components unrolled.
    # The max is taken on the magnitudes' bit patterns, ordered like the magnitudes
    # for numbers (NaN fails the range check); a float max would not vectorize.
    values, patterns, out = flat[start:stop], bits[start:stop], digits[:, start:stop]
    top, bad, off, low = 0, 0, 0, np.iinfo(np.int64).max
    for i in range(stop - start):
        v = values[i]
        top = max(top, patterns[i] & mask)
        bad += not (abs(v) < limit)
        x = np.float64(v) * scale
        t = np.int64(x)  # T_m: the conversion truncates toward zero
        off += np.float64(t) != x
        low = min(low, t)
        sign = t >> 63
        previous = np.int64(0)
        for c in range(len(shifts)):
            s = shifts[c]
            current = (t + (sign & ((np.int64(1) << s) - 1))) >> s  # trunc(T_m / 2**s)
            out[c, i] = current - (previous << widths[c])
            previous = current
    return top, bad, off, low


@numba.njit(parallel=True, **JIT)
def flat_split(flat, bits, mask, digits, shifts, widths, limit, scale, blocks):
    n = flat.size
    step = -(-n // blocks)
    found = np.zeros((blocks, 4), np.int64)
    for b in numba.prange(blocks):
        top, bad, off, low = block(flat, bits, mask, digits, shifts, widths, limit, scale,
                                   b * step, min(n, (b + 1) * step))
        found[b, 0], found[b, 1], found[b, 2], found[b, 3] = top, bad, off, low
    return found[:, 0].max(), found[:, 1].sum(), found[:, 2].sum(), found[:, 3].min()


@numba.njit(parallel=True, **JIT)
def row_split(flat, bits, mask, digits, stats, shifts, widths, limit, scale, columns,
              blocks):
    rows = flat.size // columns
    step = -(-rows // blocks)
    found = np.zeros((blocks, 4), np.int64)
    found[:, 3] = np.iinfo(np.int64).max
    for b in numba.prange(blocks):
        for row in range(b * step, min(rows, (b + 1) * step)):
            start = row * columns
            top, bad, off, low = block(flat, bits, mask, digits, shifts, widths, limit,
                                       scale, start, start + columns)
            found[b, 0] = max(found[b, 0], top)
            found[b, 1] += bad
            found[b, 2] += off
            found[b, 3] = min(found[b, 3], low)
            for c in range(len(shifts)):  # the row's digits are still in cache
                part = digits[c, start : start + columns]
                total, largest = np.int64(0), np.int64(0)
                for i in range(columns):
                    magnitude = abs(np.int64(part[i]))
                    total += magnitude
                    largest = max(largest, magnitude)
                stats[c, 0, row] = total
                stats[c, 1, row] = largest
    return found[:, 0].max(), found[:, 1].sum(), found[:, 2].sum(), found[:, 3].min()


@numba.njit(parallel=True, **JIT)
def int_products(a, columns, out, blocks):
    # out[i, j] = a[i] . columns[j] in int32, exact while every partial sum stays below
    # 2**31 (the caller's check): row blocks on every core, each row read once for all
    # the columns, which stay in cache.
    m, k = a.shape
    step = -(-m // blocks)
    for b in numba.prange(blocks):
        for i in range(b * step, min(m, (b + 1) * step)):
            row = a[i]
            for j in range(columns.shape[0]):
                column = columns[j]
                total = np.int32(0)
                for t in range(k):
                    total += np.int32(row[t]) * column[t]
                out[i, j] = total
