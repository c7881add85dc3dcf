"""Receiving one uploaded scan: streamed, size-capped, into a private temporary folder.

The multipart body is parsed as it arrives with python-multipart's streaming parser, so the
size cap is enforced before the body is read in full (413), and the file's bytes go straight
into the request's own temporary folder (never the system temp dir, where Starlette's form
parser would spool large uploads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg")
FIELD = "file"
_SLACK = 64 * 1024  # multipart boundaries and headers around the file


def suffix_of(filename: str) -> str | None:
    """The accepted suffix of ``filename`` (``.nii.gz`` counts as one), else None."""
    low = filename.lower()
    return next((s for s in SUFFIXES if low.endswith(s)), None)


@dataclass
class _Part:
    """Parser state: the current part's headers, and the upload once found."""

    folder: Path
    max_bytes: int
    header_field: bytes = b""
    header_value: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    writing: object = None
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    error: HTTPException | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield,
                "on_header_value": self._hvalue, "on_header_end": self._hend,
                "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self.headers, self.header_field, self.header_value = {}, b"", b""

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _hend(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        if params.get(b"name", b"").decode("latin-1") != FIELD or self.path is not None:
            return
        name = params.get(b"filename", b"").decode("utf-8", "replace").replace("\\", "/")
        name = name.rsplit("/", 1)[-1]
        suffix = suffix_of(name)
        if suffix is None:
            shown = name or "(no file name)"
            self.error = HTTPException(415, f"unsupported file '{shown}': upload a .nii, "
                                            f".nii.gz, .png or .jpg file")
            return
        self.filename, self.path = name, self.folder / f"upload{suffix}"
        self.writing = self.path.open("wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.writing is None:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            self.error = HTTPException(413, too_large(self.max_bytes))
            self._end()
            return
        self.writing.write(data[start:end])

    def _end(self) -> None:
        if self.writing is not None:
            self.writing.close()
            self.writing = None


def too_large(max_bytes: int) -> str:
    return (f"upload larger than the server's limit of {max_bytes / 2**20:.3g} MiB; send a "
            f"smaller file or restart the server with a larger --max-upload-mb")


async def receive_upload(request: Request, folder: Path, max_bytes: int) -> tuple[str, Path]:
    """Stream the ``file`` field of a multipart request into ``folder``.

    Returns:
        ``(client's file name, path of the saved file)``.

    Raises:
        HTTPException: 413 past ``max_bytes``; 415 not multipart, or not an accepted suffix;
            422 no ``file`` field.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise HTTPException(415, "send the scan as multipart/form-data with a field 'file'")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes + _SLACK:
        raise HTTPException(413, too_large(max_bytes))
    part = _Part(folder, max_bytes)
    parser = MultipartParser(params[b"boundary"], part.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + _SLACK:
                raise HTTPException(413, too_large(max_bytes))
            parser.write(chunk)
            if part.error is not None:
                raise part.error
        parser.finalize()
    finally:
        part._end()
    if part.path is None:
        raise HTTPException(422, f"no file in the form field '{FIELD}'; upload one scan as "
                                 f"'{FIELD}'")
    return part.filename, part.path
