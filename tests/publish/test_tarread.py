"""The lean tar reader yields exactly what tarfile yields, and is at least as strict."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from rcds.errors import InputError
from rcds.publish.tarread import TarReader, _unsigned_sum, fast_header
from rcds.testing.hostile_tars import CASES

FIELDS = ("name", "type", "size", "mode", "uid", "gid", "mtime", "linkname", "uname", "gname", "pax_headers")


def _tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:

        def add(name: str, data: bytes | None = None, **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)

        add("top", type=tarfile.DIRTYPE, mode=0o755, mtime=1_600_000_000, uname="alice", gname="phys")
        add("top/a.txt", b"hello\n", mode=0o644, uid=1000, gid=100)
        add("top/exact-block", b"x" * 512)
        add("top/odd", b"y" * 513, mode=0o4755)
        add("top/empty", b"")
        add("top/" + "long-directory-name/" * 8 + "file.py", b"long name\n")  # prefix or PAX or GNU
        add("top/link", type=tarfile.SYMTYPE, linkname="a.txt")
        add("top/hard", type=tarfile.LNKTYPE, linkname="top/a.txt")
        add("top/ünïcödé", b"utf-8\n")
        if fmt != tarfile.USTAR_FORMAT:
            add("top/" + "n" * 120, b"long last component\n")
            add("top/big-uid", b"", uid=3_000_000)  # GNU: base-256 number
            add("top/link-long", type=tarfile.SYMTYPE, linkname="t/" * 70)
            add("top/float-mtime", b"t", mtime=1_600_000_000.25)
    return buf.getvalue()


class _Strict(tarfile.TarInfo):
    """tarfile's own parser, made strict as rcds was before the lean reader (the reference)."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:  # type: ignore[override]
        if len(buf) != tarfile.BLOCKSIZE:
            raise InputError("truncated")
        if buf.count(tarfile.NUL) == tarfile.BLOCKSIZE:
            return super().frombuf(buf, encoding, errors)
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            raise InputError(f"corrupt tar header ({exc})") from None


def _reference(data: bytes) -> list[tuple[object, ...]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", tarinfo=_Strict) as tf:
        out = []
        for ti in tf:
            f = tf.extractfile(ti) if ti.isreg() else None
            out.append((*(getattr(ti, k) for k in FIELDS), f.read() if f else None))
        return out


def _ours(data: bytes) -> list[tuple[object, ...]]:
    reader = TarReader(io.BytesIO(data))
    return [
        (*(getattr(ti, k) for k in FIELDS), reader.read(ti.size) if ti.isreg() else None) for ti in reader
    ]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_and_data_equal_tarfile(fmt: int) -> None:
    data = _tar(fmt)
    assert _ours(data) == _reference(data)


def test_unread_data_is_skipped() -> None:
    data = _tar(tarfile.PAX_FORMAT)
    names = [ti.name for ti in TarReader(io.BytesIO(data))]  # reads no data at all
    assert names == [m[0] for m in _reference(data)]


def test_the_fast_path_parses_common_headers_exactly_like_tarfile() -> None:
    data = _tar(tarfile.GNU_FORMAT)
    fast = 0
    for offset in range(0, len(data) - 1024, 512):
        block = data[offset : offset + 512]
        try:
            want = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            continue  # a data block
        got = fast_header(block)
        if got is None:
            continue
        fast += 1
        if want.isdir():
            want.name = want.name.rstrip("/")
        assert [getattr(got, k) for k in (*FIELDS, "chksum", "devmajor", "devminor")] == [
            getattr(want, k) for k in (*FIELDS, "chksum", "devmajor", "devminor")
        ]
    assert fast >= 10


def test_a_corrupt_header_after_the_first_is_an_error_not_the_end() -> None:
    data = bytearray(_tar(tarfile.USTAR_FORMAT))
    data[512 + 148] ^= 1  # checksum field of the second header (the first is a directory: no data)
    with pytest.raises(InputError, match="corrupt tar header"):
        list(TarReader(io.BytesIO(bytes(data))))


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.policy == "reject" and not c.max_bytes], ids=lambda c: c.name
)
def test_hostile_cases_fail_no_later_than_with_tarfile(case) -> None:
    """Wherever tarfile (strict) fails on a corpus case, so does the reader, and vice versa.

    (Byte limits are the stream counter's job, not the reader's: those cases are left out.)
    """
    from rcds.publish.tarsource import _open_decompressed

    def outcome(read) -> str:
        try:
            raw, _ = _open_decompressed(io.BytesIO(case.build()))
            return repr(read(raw.read()))
        except (InputError, tarfile.TarError, EOFError, OSError, ValueError) as exc:
            return f"error: {type(exc).__name__}"
        except Exception as exc:  # decompression errors of any kind
            return f"error: {type(exc).__name__}"

    ours, theirs = outcome(_ours), outcome(_reference)
    assert ours.startswith("error") == theirs.startswith("error"), (ours, theirs)
    if not ours.startswith("error"):
        assert ours == theirs


def _pax_member(records: bytes, header: tarfile.TarInfo, data: bytes = b"", pad: bytes = b"") -> bytes:
    """A PAX extended header holding ``records`` (padded with ``pad``, then zeros), then ``header``."""
    x = tarfile.TarInfo("././@PaxHeader")
    x.type = tarfile.XHDTYPE
    x.size = len(records)
    body = records + pad
    body += bytes(-len(body) % 512)
    out = x.tobuf(tarfile.USTAR_FORMAT) + body + header.tobuf(tarfile.USTAR_FORMAT)
    return out + data + bytes(-len(data) % 512)


def _record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    n = len(body) + len(str(n))
    n = len(body) + len(str(n))
    return str(n).encode() + body


def _file(name: str = "short", size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.type = kind
    if kind == tarfile.SYMTYPE:
        ti.linkname = "target"
    return ti


LONG = b"dir/" * 40 + b"file.py"
PAX_CASES = {
    "path": _pax_member(_record(b"path", LONG), _file(size=3), b"abc"),
    "path and linkpath": _pax_member(
        _record(b"path", LONG) + _record(b"linkpath", b"t/" * 80), _file(kind=tarfile.SYMTYPE)
    ),
    "directory path with slashes": _pax_member(
        _record(b"path", b"d/" * 60 + b"//"), _file("d", kind=tarfile.DIRTYPE)
    ),
    "repeated path": _pax_member(_record(b"path", b"first") + _record(b"path", LONG), _file()),
    "empty records": _pax_member(b"", _file(size=1), b"z"),
    "utf-8 path": _pax_member(_record(b"path", "ünï/".encode() * 40), _file()),
    "not utf-8": _pax_member(_record(b"path", b"\xff\xfe" * 60), _file()),
    "hdrcharset": _pax_member(_record(b"hdrcharset", b"BINARY") + _record(b"path", b"\xff" * 120), _file()),
    "mtime": _pax_member(_record(b"mtime", b"1600000000.25") + _record(b"path", LONG), _file()),
    "size": _pax_member(_record(b"size", b"2") + _record(b"path", LONG), _file(size=2), b"ab"),
    "no newline": _pax_member(_record(b"path", LONG)[:-1] + b"x", _file()),
    "length too long": _pax_member(b"999 path=x\n", _file()),
    "length zero": _pax_member(b"0 path=x\n", _file()),
    "no digits": _pax_member(b"x path=x\n", _file()),
    "junk in padding": _pax_member(_record(b"path", LONG), _file(), pad=b"12 path=ab\n"),
    "gnu sparse key": _pax_member(_record(b"GNU.sparse.name", LONG), _file()),
    "followed by a pax header": _pax_member(
        _record(b"path", LONG), _file("./PaxHeaders/x", kind=tarfile.XHDTYPE)
    ),
}


@pytest.mark.parametrize("case", list(PAX_CASES), ids=list(PAX_CASES))
@pytest.mark.parametrize("end", ["complete", "truncated after the header", "cut inside the records"])
def test_pax_extended_headers_read_exactly_like_tarfile(case: str, end: str) -> None:
    member = PAX_CASES[case]
    data = (
        member + bytes(1024)
        if end == "complete"
        else member[:1024]
        if end != "cut inside the records"
        else member[:700]
    )

    def outcome(read) -> str:  # type: ignore[no-untyped-def]
        try:
            return repr(read(data))
        except (InputError, tarfile.TarError, EOFError, ValueError) as exc:
            return f"error: {type(exc).__name__}"

    ours, theirs = outcome(_ours), outcome(_reference)
    assert ours.startswith("error") == theirs.startswith("error"), (ours, theirs)
    if not ours.startswith("error"):
        assert ours == theirs


def test_long_names_in_pax_headers_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar(tarfile.PAX_FORMAT)
    want = _reference(data)
    assert any(m[0].startswith("top/long-directory-name/") for m in want)

    def refuse(*args: object) -> object:
        raise AssertionError("tarfile's PAX code was used")

    monkeypatch.setattr(tarfile.TarInfo, "_proc_pax", refuse)
    reader = TarReader(
        io.BytesIO(
            _tar(tarfile.USTAR_FORMAT)[:0] + _pax_member(_record(b"path", LONG), _file()) + bytes(1024)
        )
    )
    assert [ti.name for ti in reader] == [LONG.decode()]
    offsets = [(ti.offset, ti.offset_data) for ti in TarReader(io.BytesIO(PAX_CASES["path"] + bytes(1024)))]
    assert offsets == [(0, 1024 + 512)]


def test_unsigned_sum_is_tarfiles_header_sum() -> None:
    """The Adler-32 shortcut equals the plain byte sum outside the checksum field, also at its
    largest (all bytes 0xff: each piece just under the modulus)."""
    rng = random.Random(7)
    blocks = [bytes(512), b"\xff" * 512] + [rng.randbytes(512) for _ in range(300)]
    for block in blocks:
        assert _unsigned_sum(block) == sum(block) - sum(block[148:156])
