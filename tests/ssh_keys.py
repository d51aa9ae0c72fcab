"""OpenSSH public key lines for tests, built from their wire format (no ssh-keygen needed)."""

from __future__ import annotations

import base64
import os
import struct


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading zero byte keeps it positive
    return _string(raw)


def ed25519_public_key(comment: str = "tester@example") -> str:
    blob = _string(b"ssh-ed25519") + _string(os.urandom(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def rsa_public_key(bits: int = 3072, comment: str = "tester@example") -> str:
    modulus = (1 << (bits - 1)) | int.from_bytes(os.urandom(bits // 8), "big") >> 1 | 1
    blob = _string(b"ssh-rsa") + _mpint(65537) + _mpint(modulus)
    return f"ssh-rsa {base64.b64encode(blob).decode()} {comment}"
