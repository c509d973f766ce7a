"""When the workload certificate expires: its notAfter, read from the PEM file.

A minimal DER walk (Certificate -> tbsCertificate -> validity -> notAfter) instead of
``ssl`` or ``cryptography``: importing ``ssl`` loads OpenSSL into an agent that otherwise
never needs it (about 3.5 MiB of RSS, docs/telemetry.md has the figure), to read one date.
"""

from __future__ import annotations

import binascii
from typing import Tuple

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_SEQUENCE = 0x30
_VERSION = 0xA0  # [0] EXPLICIT, present from X.509 v2 on
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18


class CertificateError(ValueError):
    """The file holds no certificate we can read a notAfter from."""


def _tlv(der: bytes, pos: int) -> Tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise CertificateError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(der):
            raise CertificateError("unsupported DER length")
        length = int.from_bytes(der[pos : pos + n], "big")
        pos += n
    if pos + length > len(der):
        raise CertificateError("truncated DER")
    return tag, pos, pos + length


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _asn1_time(tag: int, text: bytes) -> int:
    """Seconds since the epoch of an X.509 UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime."""
    s = text.decode("ascii", errors="replace")
    if tag == _UTC_TIME and len(s) == 13 and s.endswith("Z") and s[:12].isdigit():
        yy = int(s[:2])
        year, rest = (2000 + yy if yy < 50 else 1900 + yy), s[2:12]  # RFC 5280: YY < 50 is 20YY
    elif tag == _GENERALIZED_TIME and len(s) == 15 and s.endswith("Z") and s[:14].isdigit():
        year, rest = int(s[:4]), s[4:14]
    else:
        raise CertificateError(f"unsupported time {s!r}")
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def not_after_der(der: bytes) -> int:
    """The notAfter of a DER certificate, in seconds since the epoch."""
    tag, start, _end = _tlv(der, 0)
    if tag != _SEQUENCE:
        raise CertificateError("not a certificate")
    tag, pos, tbs_end = _tlv(der, start)
    if tag != _SEQUENCE:
        raise CertificateError("not a certificate")
    if der[pos] == _VERSION:
        pos = _tlv(der, pos)[2]
    for _field in ("serialNumber", "signature", "issuer"):
        pos = _tlv(der, pos)[2]
    tag, pos, _validity_end = _tlv(der, pos)
    if tag != _SEQUENCE or pos >= tbs_end:
        raise CertificateError("no validity")
    pos = _tlv(der, pos)[2]  # notBefore
    tag, start, end = _tlv(der, pos)
    return _asn1_time(tag, der[start:end])


def not_after_pem(pem: bytes) -> int:
    """The notAfter of the first certificate in a PEM file (the leaf, in a chain)."""
    begin = pem.find(_BEGIN)
    end = pem.find(_END, begin)
    if begin < 0 or end < 0:
        raise CertificateError("no PEM certificate")
    try:
        der = binascii.a2b_base64(pem[begin + len(_BEGIN) : end])
    except binascii.Error as exc:
        raise CertificateError(f"bad base64: {exc}") from None
    return not_after_der(der)


def read_not_after(path: str) -> int:
    """The notAfter of the certificate in ``path``; OSError or CertificateError if unreadable."""
    with open(path, "rb") as fh:
        return not_after_pem(fh.read())
