"""TensorBoard scalars without TensorBoard: ``events.out.tfevents.*`` files written directly.

The format is TFRecord framing (length, masked CRC-32C of the length, payload, masked CRC-32C of the
payload) around ``tensorflow.Event`` protobuf messages; a scalar is an Event holding a Summary with one
``simple_value`` per tag. Writing the few fields by hand keeps TensorBoard (and its protobuf and grpc
pins) out of the dependencies of every training worker; `tensorboard --logdir RUN_DIR/pretrain` reads
the files as its own (tests/training/test_tensorboard.py reads them back with TensorBoard's loader).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # protobuf int64: two's complement
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None, summary: bytes = b"") -> bytes:
    msg = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if summary:
        msg += _bytes_field(5, summary)
    return msg


def _scalar_summary(values: Mapping[str, float]) -> bytes:
    out = b""
    for tag, v in values.items():
        value = _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v))
        out += _bytes_field(1, value)
    return out


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked(header)) + payload + struct.pack("<I", _masked(payload))


class ScalarWriter:
    """Appends scalar events to one ``events.out.tfevents.<time>.<host>`` file in ``log_dir``; each
    ``add`` is flushed, so a crash loses nothing already logged and TensorBoard sees it at once."""

    def __init__(self, log_dir: str | Path):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.dir / name
        self._f = open(self.path, "ab")  # noqa: SIM115 - lives as long as the writer
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def add(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        numbers = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float))}
        if numbers:
            now = time.time() if wall_time is None else wall_time
            self._write(_event(now, step, summary=_scalar_summary(numbers)))

    def _write(self, payload: bytes) -> None:
        self._f.write(_record(payload))
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
