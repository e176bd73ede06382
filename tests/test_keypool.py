"""``keypool.py``: the tests' pooled RSA keys are valid, 2048-bit and never handed out twice."""

from __future__ import annotations

import itertools

from cryptography.hazmat.primitives.asymmetric import rsa

import keypool
from rcds.format import keys


def test_every_prime_of_the_pool_passes_openssls_key_check() -> None:
    primes = keypool.PRIMES
    assert len(primes) == 64 and len(set(primes)) == 64
    for p, q in zip(primes[0::2], primes[1::2], strict=True):  # each prime in one checked key
        d = pow(keypool.EXPONENT, -1, (p - 1) * (q - 1))
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(keypool.EXPONENT, p * q),
        )  # fmt: skip
        numbers.private_key()  # OpenSSL's RSA_check_key: p and q prime, d and the CRT values right
    assert all(p.bit_length() == 1024 and (p - 1) % keypool.EXPONENT for p in primes)
    assert all((p * q).bit_length() == 2048 for p, q in itertools.combinations(primes, 2))


def test_the_session_hands_out_pool_keys_each_once_and_they_sign() -> None:
    assert keys.generate_key is keypool.pooled_key  # installed for the session by conftest.py
    made = [keys.generate_key() for _ in range(5)]
    assert len({k.public_key().public_numbers().n for k in made}) == 5
    assert all(k.key_size == keys.KEY_BITS for k in made)
    message = b"0123456789abcdef0123"
    sig = keys.sign_raw(made[0], message)
    assert keys.verify_raw(made[0].public_key(), message, sig)
    assert not keys.verify_raw(made[1].public_key(), message, sig)
    loaded = keys.load_private_key(keys.private_key_pem(made[2]))  # the loader checks the key again
    assert loaded.private_numbers() == made[2].private_numbers()
