"""api.parsers.split_parts: a multipart body split into its parts as Django's own parser reads them."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.test.client import BOUNDARY, encode_multipart
from urllib3 import encode_multipart_formdata

from api.exceptions import InvalidInput
from api.parsers import Part, PartsParser, split_parts

FILES = [("input", ("a.jpg", b"\xff\xd8 first \r\n--not the boundary\r\n", "image/jpeg")),
         ("input", ("b.png", b"", "image/png")),
         ("note", "plain field"),
         ("input", ("c.bin", bytes(range(256)) * 40, "application/octet-stream"))]


def django_reads(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """(field, file name, bytes) of every file part, as Django's MultiPartParser reads the body."""
    from django.core.files.uploadhandler import MemoryFileUploadHandler

    meta = {"CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body))}
    _, files = DjangoMultiPartParser(meta, io.BytesIO(body), [MemoryFileUploadHandler()]).parse()
    return [(name, upload.name, upload.read()) for name, uploads in files.lists() for upload in uploads]


def parse(body: bytes, content_type: str, limit: int | None = None) -> list[Part]:
    from django.conf import settings

    if limit is not None:
        settings.INFERQ_MAX_BULK_INPUTS = limit
    return PartsParser().parse(io.BytesIO(body), content_type)


def test_a_body_urllib3_encodes_splits_as_django_reads_it(settings: Any) -> None:
    body, content_type = encode_multipart_formdata(FILES)

    parts = parse(body, content_type)

    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("input", "a.jpg", "image/jpeg"), ("input", "b.png", "image/png"), ("note", None, None),
        ("input", "c.bin", "application/octet-stream")]
    assert parts[2].data == b"plain field"
    files = [(p.name, p.filename, p.data) for p in parts if p.filename is not None]
    assert sorted(files) == sorted(django_reads(body, content_type))


def test_a_body_djangos_test_client_encodes_splits_the_same(settings: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    body = encode_multipart(BOUNDARY, {"input": [SimpleUploadedFile("x.jpg", b"\xff\xd8xx", "image/jpeg"),
                                                 SimpleUploadedFile("y.jpg", b"\xff\xd8yy", "image/jpeg")]})
    parts = parse(body, f"multipart/form-data; boundary={BOUNDARY}")

    assert [(p.filename, p.content_type, p.data) for p in parts] == [("x.jpg", "image/jpeg", b"\xff\xd8xx"),
                                                                     ("y.jpg", "image/jpeg", b"\xff\xd8yy")]


def test_a_preamble_and_an_epilogue_are_ignored() -> None:
    body = (b"preamble text\r\n--b1\r\nContent-Disposition: form-data; name=\"input\"; filename=\"f\"\r\n\r\n"
            b"DATA\r\n--b1--\r\nepilogue")

    assert split_parts(body, b"b1", limit=10) == [Part("input", "f", None, b"DATA")]


def test_a_body_with_no_parts_before_its_closing_line_has_none() -> None:
    assert split_parts(b"--b1--\r\n", b"b1", limit=10) == []


@pytest.mark.parametrize("body", [
    b"no boundary here at all",
    b"--b1\r\nContent-Disposition: form-data; name=\"input\"\r\n\r\nDATA with no closing line",
    b"--b1\r\nContent-Disposition: form-data; name=\"input\"\r\nno blank line\r\n--b1--",
    b"--b1\r\nno-colon-header\r\n\r\nDATA\r\n--b1--",
    b"--b1\r\nContent-Disposition: attachment; name=\"input\"\r\n\r\nDATA\r\n--b1--",
    b"--b1\r\nContent-Disposition: form-data\r\n\r\nDATA\r\n--b1--",
    b"--b1junk\r\nContent-Disposition: form-data; name=\"input\"\r\n\r\nDATA\r\n--b1--",
    b"--b1\r\nContent-Disposition: form-data; name=\"input\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"REFUQQ==\r\n--b1--",
])
def test_a_malformed_body_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        split_parts(body, b"b1", limit=10)
    assert refused.value.code == "bad_request"


def test_parts_past_the_limit_are_refused() -> None:
    body, content_type = encode_multipart_formdata([("input", ("f", b"x", "image/png"))] * 4)
    boundary = content_type.split("boundary=")[1].encode()

    assert len(split_parts(body, boundary, limit=4)) == 4
    with pytest.raises(InvalidInput) as refused:
        split_parts(body, boundary, limit=3)
    assert refused.value.code == "too_many_inputs"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=",
                                          "multipart/form-data; boundary=" + "x" * 201])
def test_a_content_type_without_a_usable_boundary_is_a_bad_request(content_type: str, settings: Any) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(b"--x\r\n", content_type)
    assert refused.value.code == "bad_request"
