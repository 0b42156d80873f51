"""Read an offline W&B run's records (the run-*.wandb file) so tests can check what was logged.

The file is W&B's transaction log: a 7-byte header, then LevelDB-style blocks of 32 KiB holding
length-prefixed chunks of protobuf `Record`s (wandb.proto.wandb_internal_pb2).
"""
import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def read_records(offline_run: Path) -> list:
    data = next(offline_run.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the rest of a block too small for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        chunks = chunk if kind in (FULL, FIRST) else chunks + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records


def summarise(offline_run: Path) -> dict:
    """{'run': RunRecord, 'config': {...}, 'history': [{key: value}], 'summary': {...}, 'exit_code': int}."""
    out = {"run": None, "config": {}, "history": [], "summary": {}, "exit_code": None}
    for r in read_records(offline_run):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            out["history"].append(_items(r.history.item))
        elif kind == "summary":
            out["summary"].update(_items(r.summary.update))
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


def _items(items) -> dict:
    """History and summary items: key (or nested key parts joined by '/') -> decoded JSON value."""
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}
