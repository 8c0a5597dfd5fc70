"""The feature tokeniser's ASCII case as one compiled pass (numba): tokens and their blake2b, no Python per piece.

`models.features` tokenises each distinct space-free piece with a regex and hashes each token with
hashlib's blake2b (8-byte digest). On ASCII text both are simple enough to do exactly in a compiled loop:
NFC/NFKC/NFD/NFKD leave ASCII unchanged, `str.lower` on ASCII is A-Z -> a-z, and `\\w+(?:'\\w+)*|[^\\w\\s]`
reduces to byte classes. A piece with any other byte is left to the Python path, so the ids are the same
bytes either way (tests/test_tokens_native.py compares both on every ASCII byte and on random text).

Training's preprocess uses it on large tables; serving never imports it (numba's import costs more than a
request's tokens).
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

_IV = np.array(
    [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)
_SIGMA = np.array(
    [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    ],
    dtype=np.int64,
)
# Byte classes of the token regex on ASCII (Python's str patterns): 1 = \w, 2 = \s (str.isspace: 9-13,
# 28-31, 32), 0 = a one-character token. 127-255 never reach the loop (not ASCII).
_CLASS = np.zeros(128, dtype=np.uint8)
for _c in range(128):
    _ch = chr(_c)
    _CLASS[_c] = 1 if (_ch.isalnum() or _ch == "_") else 2 if _ch.isspace() else 0
_APOSTROPHE = 39


def _jit(fn):
    # Cached next to this file (or numba's user cache); compiled once per process where neither is writable.
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        return numba.njit(nogil=True)(fn)


# The helpers are inlined into the one compiled entry point, so a process loads one cached function.
_inline = numba.njit(inline="always")


@_inline
def _rotr(x, n):  # pragma: no cover - compiled
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@_inline
def _g(a, b, c, d, x, y):  # pragma: no cover - compiled
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@_inline
def _compress(h, m, t, last, iv, sigma):  # pragma: no cover - compiled
    # The 16 working words as locals, so they stay in registers.
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11, v12, v13, v14, v15 = iv[0], iv[1], iv[2], iv[3], iv[4] ^ t, iv[5], iv[6], iv[7]
    if last:
        v14 = ~v14
    for r in range(12):
        s = sigma[r % 10]
        v0, v4, v8, v12 = _g(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _g(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _g(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _g(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _g(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _g(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _g(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _g(v3, v4, v9, v14, m[s[14]], m[s[15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


@_inline
def _blake2b_64(data, start, end, lower, h, m, iv, sigma):  # pragma: no cover - compiled
    """blake2b(data[start:end], digest_size=8) read as a little-endian uint64, A-Z lowered when `lower`."""
    for i in range(8):
        h[i] = iv[i]
    h[0] ^= np.uint64(0x01010008)  # fanout 1, depth 1, no key, 8-byte digest
    n = end - start
    pos = start
    done = 0
    while True:
        block = min(128, n - done)
        final = done + block == n
        for w in range(16):
            m[w] = np.uint64(0)
        for j in range(block):
            c = data[pos + j]
            if lower and 65 <= c <= 90:
                c += 32
            m[j >> 3] |= np.uint64(c) << np.uint64(8 * (j & 7))
        done += block
        pos += block
        _compress(h, m, np.uint64(done), final, iv, sigma)
        if final:
            return h[0]


@_jit
def _ascii_tokens(offsets, data, lower, classes, iv, sigma):  # pragma: no cover - compiled
    n = offsets.shape[0] - 1
    counts = np.zeros(n, np.int64)
    hashes = np.empty(max(1, data.shape[0]), np.uint64)
    h = np.empty(8, np.uint64)
    m = np.empty(16, np.uint64)
    out = 0
    for p in range(n):
        start, end = offsets[p], offsets[p + 1]
        ascii_only = True
        for i in range(start, end):
            if data[i] >= 128:
                ascii_only = False
                break
        if not ascii_only:
            counts[p] = -1
            continue
        first = out
        i = start
        while i < end:
            cls = classes[data[i]]
            if cls == 2:
                i += 1
                continue
            t = i
            i += 1
            if cls == 1:
                while True:
                    while i < end and classes[data[i]] == 1:
                        i += 1
                    # `(?:'\w+)*`: an apostrophe joins the token only with a word character after it.
                    if i + 1 < end and data[i] == _APOSTROPHE and classes[data[i + 1]] == 1:
                        i += 1
                        continue
                    break
            hashes[out] = _blake2b_64(data, t, i, lower, h, m, iv, sigma)
            out += 1
        counts[p] = out - first
    return counts, hashes[:out]


def ascii_tokens(pieces, lowercase: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each piece of a pyarrow string array: its token count (-1: not ASCII, for the Python path), and
    every ASCII piece's token hashes, flat in piece order."""
    _, off_buf, data_buf = pieces.buffers()
    width = np.int64 if pa.types.is_large_string(pieces.type) else np.int32
    offsets = np.frombuffer(off_buf, dtype=width)[pieces.offset : pieces.offset + len(pieces) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return _ascii_tokens(offsets.astype(np.int64), data, bool(lowercase), _CLASS, _IV, _SIGMA)
