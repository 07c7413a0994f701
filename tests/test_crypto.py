"""Asset encryption and sealed key delivery: round trips and one clear error per failure."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.crypto import (
    AssetKey,
    Identity,
    decrypt_bytes,
    decrypt_file,
    decrypt_stream,
    encrypt_bytes,
    encrypt_file,
    encrypt_stream,
    open_sealed_key,
    seal_key,
)
from fedmarket.crypto.asset import CHUNK_SIZE, HEADER_BYTES
from fedmarket.exceptions import (
    DecryptionFailed,
    InvalidInput,
    KeyCommitmentMismatch,
    NotAnAsset,
    TamperedCiphertext,
    TruncatedCiphertext,
    WrongKey,
    WrongRecipient,
)

MIB = 1024 * 1024
ABYTES = 17
SMALL_CHUNK = 64


def encrypt_small_chunks(data: bytes, key: AssetKey) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, size=len(data), chunk_size=SMALL_CHUNK)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * MIB])
def test_round_trip(size: int) -> None:
    key = AssetKey.generate()
    data = random.Random(size).randbytes(size)

    cipher = encrypt_bytes(data, key)

    assert decrypt_bytes(cipher, key) == data
    if size >= 16:  # shorter plaintexts may occur in random ciphertext by chance
        assert data[:16] not in cipher
    chunks = max(1, -(-size // CHUNK_SIZE))
    assert len(cipher) == HEADER_BYTES + size + chunks * ABYTES


@pytest.mark.slow
def test_50_mib_file_round_trip_in_constant_memory(tmp_path: Path) -> None:
    plain, cipher, back = tmp_path / "plain", tmp_path / "cipher", tmp_path / "back"
    rng = random.Random(3)
    with plain.open("wb") as out:
        for _ in range(50):
            out.write(rng.randbytes(MIB))
    key = AssetKey.generate()

    tracemalloc.start()
    encrypt_file(plain, cipher, key)
    decrypt_file(cipher, back, key)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(plain.read_bytes()).digest()
    assert peak < 4 * MIB, f"peak Python memory {peak / MIB:.1f} MiB for a 50 MiB file"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5 * SMALL_CHUNK + 3), st.data())
def test_any_single_bit_flip_is_caught(data: bytes, draw: st.DataObject) -> None:
    key = AssetKey.generate()
    cipher = bytearray(encrypt_small_chunks(data, key))
    bit = draw.draw(st.integers(min_value=0, max_value=8 * len(cipher) - 1))
    cipher[bit // 8] ^= 1 << (bit % 8)

    with pytest.raises(DecryptionFailed):
        decrypt_bytes(bytes(cipher), key)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5 * SMALL_CHUNK + 3), st.data())
def test_any_truncation_is_caught(data: bytes, draw: st.DataObject) -> None:
    key = AssetKey.generate()
    cipher = encrypt_small_chunks(data, key)
    cut = draw.draw(st.integers(min_value=HEADER_BYTES, max_value=len(cipher) - 1))

    with pytest.raises(TruncatedCiphertext, match="ends inside chunk"):
        decrypt_bytes(cipher[:cut], key)


def test_truncated_header_is_not_an_asset() -> None:
    cipher = encrypt_bytes(b"model", AssetKey.generate())
    with pytest.raises(NotAnAsset):
        decrypt_bytes(cipher[: HEADER_BYTES - 1], AssetKey.generate())


def test_wrong_key_is_named_as_such() -> None:
    cipher = encrypt_bytes(b"weights" * 100, AssetKey.generate())
    with pytest.raises(WrongKey, match="not the one the asset was encrypted with"):
        decrypt_bytes(cipher, AssetKey.generate())


def test_tampered_chunk_is_named_by_position() -> None:
    key = AssetKey.generate()
    cipher = bytearray(encrypt_small_chunks(bytes(3 * SMALL_CHUNK), key))
    cipher[HEADER_BYTES + SMALL_CHUNK + ABYTES + 5] ^= 1  # inside chunk 2
    with pytest.raises(TamperedCiphertext, match="chunk 2 of 3 failed authentication"):
        decrypt_bytes(bytes(cipher), key)


def test_reordered_chunks_fail() -> None:
    key = AssetKey.generate()
    cipher = encrypt_small_chunks(os.urandom(3 * SMALL_CHUNK), key)
    size = SMALL_CHUNK + ABYTES
    body = cipher[HEADER_BYTES:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    swapped = cipher[:HEADER_BYTES] + chunks[1] + chunks[0] + chunks[2]
    with pytest.raises(TamperedCiphertext, match="reordered"):
        decrypt_bytes(swapped, key)


def test_appended_bytes_fail() -> None:
    key = AssetKey.generate()
    with pytest.raises(TamperedCiphertext, match="follow the final chunk"):
        decrypt_bytes(encrypt_bytes(b"abc", key) + b"\x00", key)


def test_plain_file_is_not_an_asset() -> None:
    with pytest.raises(NotAnAsset, match="not a fedmarket encrypted asset"):
        decrypt_bytes(b'{"weights": []}' * 10, AssetKey.generate())


def test_failed_decryption_writes_no_file(tmp_path: Path) -> None:
    key = AssetKey.generate()
    cipher = bytearray(encrypt_bytes(os.urandom(3 * CHUNK_SIZE), key))
    cipher[-5] ^= 1  # the last chunk: earlier chunks decrypt fine first
    (tmp_path / "cipher").write_bytes(bytes(cipher))

    with pytest.raises(TamperedCiphertext):
        decrypt_file(tmp_path / "cipher", tmp_path / "plain", key)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cipher"]


def test_decrypt_stream_returns_plaintext_size() -> None:
    key = AssetKey.generate()
    out = io.BytesIO()
    assert decrypt_stream(io.BytesIO(encrypt_bytes(b"12345", key)), out, key) == 5


# -- sealed key delivery -----------------------------------------------------------------------


def test_sealed_key_round_trip_and_commitment() -> None:
    buyer = Identity.generate()
    key = AssetKey.generate()

    opened = open_sealed_key(seal_key(key, buyer.public_key), buyer)

    assert opened == key
    opened.check_commitment(hashlib.sha256(key.secret).digest())


def test_wrong_recipient_cannot_open_the_sealed_key() -> None:
    sealed = seal_key(AssetKey.generate(), Identity.generate().public_key)
    with pytest.raises(WrongRecipient, match="not sealed to this identity"):
        open_sealed_key(sealed, Identity.generate())


def test_truncated_sealed_key_is_a_wrong_recipient_error() -> None:
    buyer = Identity.generate()
    with pytest.raises(WrongRecipient, match="80 bytes"):
        open_sealed_key(seal_key(AssetKey.generate(), buyer.public_key)[:-1], buyer)


def test_bad_commitment_is_refused() -> None:
    key = AssetKey.generate()
    with pytest.raises(KeyCommitmentMismatch, match="does not hash to the listing"):
        key.check_commitment(AssetKey.generate().commitment)


def test_keys_never_show_in_repr() -> None:
    key, buyer = AssetKey.generate(), Identity.generate()
    assert key.secret.hex() not in repr(key)
    assert bytes(buyer.private_key).hex() not in repr(buyer)


def test_key_files_are_owner_only_and_refuse_loose_permissions(tmp_path: Path) -> None:
    key, buyer = AssetKey.generate(), Identity.generate()
    key.save(tmp_path / "asset.key")
    buyer.save(tmp_path / "buyer.id")

    assert (tmp_path / "asset.key").stat().st_mode & 0o777 == 0o600
    assert AssetKey.load(tmp_path / "asset.key") == key
    assert Identity.load(tmp_path / "buyer.id").public_key == buyer.public_key
    with pytest.raises(InvalidInput, match="exists"):
        key.save(tmp_path / "asset.key")
    (tmp_path / "asset.key").chmod(0o644)
    with pytest.raises(InvalidInput, match="chmod 600"):
        AssetKey.load(tmp_path / "asset.key")


def test_asset_key_must_be_32_bytes() -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        AssetKey(b"short")
