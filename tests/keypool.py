"""RSA keys for the tests' repositories, made from a fixed pool of primes instead of generated.

Every repository the tests create (``create_repository``: a master key and a repository key) and
many key fixtures call :func:`rcds.format.keys.generate_key`: ~0.09 CPU-s a key here, over a
thousand keys in a run of the suite. :func:`install` replaces it, for the whole session, by
:func:`pooled_key`: a 2048-bit key whose modulus is the product of a pair of primes from
``keypool_primes.txt`` (64 primes of 1,024 bits taken from keys OpenSSL generated, each above
2^1023.5, so every product has exactly 2,048 bits), each pair used once, in order: the keys
of a session are all different, as generated ones are; only the next session has the same ones.
Once the 2,016 pairs are used, keys are generated again. Processes the tests start (the CLI in a
subprocess) generate theirs as before. The pool's primes are checked by ``tests/test_keypool.py``
(OpenSSL's key check), so a pool key skips that check (0.5 ms a key instead of ~70).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.format import keys

PRIMES = tuple(int(line, 16) for line in Path(__file__).with_name("keypool_primes.txt").read_text().split())
"""1,024-bit primes p with gcd(65537, p - 1) = 1."""
EXPONENT = 65537

_pairs = itertools.combinations(range(len(PRIMES)), 2)
_lock = threading.Lock()
_generate: Callable[[], rsa.RSAPrivateKey] = keys.generate_key


def pooled_key() -> rsa.RSAPrivateKey:
    """The next pool key (never one handed out before in this process), or a generated one."""
    with _lock:
        pair = next(_pairs, None)
    if pair is None:
        return _generate()
    p, q = PRIMES[pair[0]], PRIMES[pair[1]]
    d = pow(EXPONENT, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(EXPONENT, p * q),
    )
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)  # the pool was checked: see the test
