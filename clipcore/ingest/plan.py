"""The ingest plan: one streaming pass over the input, before any fetch, that decides what the workers cannot see from
their own slice. It gives the row count of every input file and which rows repeat an earlier valid row's URL (the
`duplicate_url` rule needs the whole input: a URL is fetched once across all workers and machines).

Memory is bounded whatever the row count, but for the duplicate rule: it keeps a 64-bit hash and a row index per
valid row (12 B/row under 2^32 rows, 16 B above), and sorting them needs as much again for a moment (~30 B/row at
the peak: about 300 MB at 10M rows). The decision is stored compactly, as the sorted global indices of the duplicate
rows (`duplicates.npy`, 8 B per duplicate); each work item carries its own few. Two URLs whose hashes collide would
make the later one a duplicate: probability about n^2 / 2^65 (3e-6 at 10M rows, 3e-4 at 100M).

URL lists (parquet, csv, tsv, jsonl, plain or .gz; a file, a folder or a glob) are read lazily: parquet in place,
the others copied once into parquet in the plan folder (streaming), so that a worker reads its slice by row group.
The plan is cached in the plan folder and reused while every input file keeps its size and mtime (and the settings
that shape it). Image folders, webdataset tars and COCO JSON are read eagerly (they are local and small) and their
prepared rows written to the plan folder, so they go through the same work items.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from clipcore.config import IngestConfig
from clipcore.ingest.sources import (
    TABLE_FORMATS,
    check_table,
    detect_format,
    normalize_table,
    read_input,
    scan_table,
    table_format,
)

PLAN_VERSION = 1
HASH_SEED = 0x5EED_C11B
BATCH_ROWS = 1 << 18  # rows per batch of the planning pass (url and caption columns only)
STAGE_ROW_GROUP = 1 << 16  # row group of the parquet copies: a worker decodes at most this many rows beyond its slice


@dataclass(frozen=True)
class WorkItem:
    """One shard's work: its rows are `pieces` (parquet file, first row, row count) in order; everything a worker needs
    besides the config, so it runs anywhere the files are visible."""

    shard: int
    first_row: int  # global index of the shard's first row (its uid)
    pieces: tuple[tuple[str, int, int], ...]
    uid_width: int
    prepared: bool  # the pieces hold prepared rows (eager sources): uid and source_error already there
    duplicates: tuple[int, ...] = ()  # global indices of its rows rejected as duplicate_url

    @property
    def rows(self) -> int:
        return sum(length for _, _, length in self.pieces)


@dataclass(frozen=True)
class Plan:
    """The planned input: `parts` are the parquet files workers read, with their row counts, in input order."""

    rows: int
    parts: tuple[tuple[str, int], ...]
    prepared: bool
    duplicates: np.ndarray = field(compare=False, repr=False)  # sorted global indices of duplicate_url rows

    @property
    def uid_width(self) -> int:
        return max(9, len(str(self.rows)))

    def items(self, shard_size: int, first: int, last: int) -> Iterator[WorkItem]:
        """Work items of shards `first..last` (inclusive); a shard spans file boundaries when a file ends inside it."""
        starts = np.cumsum([0] + [rows for _, rows in self.parts])
        for shard in range(first, last + 1):
            lo, hi = shard * shard_size, min((shard + 1) * shard_size, self.rows)
            pieces = []
            for i in range(int(np.searchsorted(starts, lo, side="right")) - 1, len(self.parts)):
                if starts[i] >= hi:
                    break
                begin, end = max(lo, starts[i]), min(hi, starts[i + 1])
                if end > begin:
                    pieces.append((self.parts[i][0], int(begin - starts[i]), int(end - begin)))
            a, b = np.searchsorted(self.duplicates, [lo, hi])
            yield WorkItem(shard, lo, tuple(pieces), self.uid_width, self.prepared,
                           tuple(int(d) for d in self.duplicates[a:b]))


def invalid_reason(max_caption_chars: int) -> pl.Expr:
    """A row's reason decidable without fetching (before the duplicate rule): its source error, else a missing or
    too long caption, else null."""
    return (
        pl.when(pl.col("source_error").is_not_null()).then(pl.col("source_error"))
        .when(pl.col("caption").is_null()).then(pl.lit("caption_missing"))
        .when(pl.col("caption").str.len_chars() > max_caption_chars).then(pl.lit("caption_too_long"))
        .otherwise(pl.lit(None, pl.String))
    )


def dedupe_key(config: IngestConfig, fmt: str) -> str | None:
    """What makes a row a duplicate of an earlier valid row: its `url` (dedupe_urls), its (url, caption) `pair`, or
    nothing (COCO: several captions of one image share its URL by design)."""
    if fmt == "coco":
        return None
    return "url" if config.dedupe_urls else "pair"


def _key_expr(key: str) -> pl.Expr:
    return pl.col("url") if key == "url" else pl.struct("url", "caption")


def prepare_rows(table: pl.DataFrame, config: IngestConfig, key: str | None = "url") -> pl.DataFrame:
    """Add `uid` and the reasons decidable without fetching: source errors, missing, huge captions, repeats.

    A row is a `duplicate_url` only when an earlier *valid* row (no other reason) has its key (see `dedupe_key`): an
    invalid row (say, a caption too long) never costs a valid row sharing its URL its place. The eager form of the
    planning pass, for small tables and as the reference the streaming pass is tested against.
    """
    width = max(9, len(str(table.height)))
    table = table.with_columns(uid=pl.int_range(pl.len()).cast(pl.String).str.zfill(width),
                               source_error=invalid_reason(config.max_caption_chars))
    if key is None:
        return table
    valid = pl.col("source_error").is_null() & pl.col("url").is_not_null()
    repeat = valid & ~pl.when(valid).then(_key_expr(key)).is_first_distinct()
    return table.with_columns(
        source_error=pl.when(repeat).then(pl.lit("duplicate_url")).otherwise(pl.col("source_error")))


def read_item(item: WorkItem, config: IngestConfig) -> pl.DataFrame:
    """A work item's prepared rows (as `prepare_rows` gives them for the whole input), read from its slices only."""
    frames = [pl.scan_parquet(path).slice(offset, length).collect() for path, offset, length in item.pieces]
    table = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    if item.prepared:
        return table
    table = normalize_table(table, config.url_col, config.caption_col)
    index = pl.int_range(pl.len()) + item.first_row
    table = table.with_columns(uid=index.cast(pl.String).str.zfill(item.uid_width),
                               source_error=invalid_reason(config.max_caption_chars))
    if item.duplicates:
        repeat = index.is_in(pl.Series(item.duplicates, dtype=pl.Int64).implode())
        table = table.with_columns(
            source_error=pl.when(repeat).then(pl.lit("duplicate_url")).otherwise(pl.col("source_error")))
    return table


def input_files(config: IngestConfig) -> list[tuple[str, str]] | None:
    """(absolute path, format) of each URL-list file `config.input` names: the file, the URL-list files directly in a
    folder, or a glob's matches, sorted; None when the input is an image folder, webdataset or COCO (eager sources)."""
    pattern, explicit = config.input, config.input_format
    if any(c in pattern for c in "*?["):
        paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not paths:
            raise FileNotFoundError(f"input {pattern} matches no file")
    else:
        path = Path(pattern)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        fmt = detect_format(path) if explicit == "auto" else explicit
        if fmt not in TABLE_FORMATS:
            return None
        if not path.is_dir():
            return [(str(path.resolve()), fmt)]
        paths = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_"))
                       and (explicit != "auto" or table_format(p)))
    files = []
    for path in paths:
        fmt = explicit if explicit != "auto" else detect_format(path)
        if fmt not in TABLE_FORMATS:
            raise ValueError(f"{path}: a {fmt} file among the URL lists of {pattern}; only {TABLE_FORMATS} mix")
        files.append((str(Path(path).resolve()), fmt))
    return files


def default_plan_dir(config: IngestConfig, output_dir: str | Path) -> Path:
    """`ingest.plan_dir`, else `<output>.plan` beside a local output folder."""
    if config.plan_dir:
        return Path(config.plan_dir)
    out = str(output_dir)
    if "://" in out and not out.startswith("file://"):
        raise ValueError(f"output {out} is not a local folder: set ingest.plan_dir to a folder every worker can read")
    return Path(out.removeprefix("file://").rstrip("/") + ".plan")


def _write_atomic(path: Path, write) -> None:
    """Write through `write(tmp_path)` then rename: concurrent runs planning the same input never see half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _plan_key(config: IngestConfig, files: list[dict]) -> str:
    shaping = {f: getattr(config, f) for f in ("input_format", "url_col", "caption_col", "max_caption_chars",
                                                "dedupe_urls", "local_paths")}
    text = json.dumps({"version": PLAN_VERSION, "polars": pl.__version__, "config": shaping,
                       "files": [[f["path"], f["size"], f["mtime_ns"]] for f in files]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(files: list[tuple[str, str]], config: IngestConfig, plan_dir: Path | None) -> list[dict]:
    """Each input file checked (header or metadata only), with its size, mtime and row count (cached by size and
    mtime in `plan_dir/files.json`; parquet counts come from the metadata, the others from a streaming count)."""
    cache = json.loads((plan_dir / "files.json").read_text()) if plan_dir and (plan_dir / "files.json").exists() else {}
    described = []
    for path, fmt in files:
        stat = os.stat(path)
        entry = {"path": path, "fmt": fmt, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        known = cache.get(path, {})
        if all(known.get(k) == entry[k] for k in ("fmt", "size", "mtime_ns")) and "rows" in known:
            entry.update(rows=known["rows"], staged=known.get("staged"))
        else:
            check_table(path, fmt, config.url_col, config.caption_col)
            entry["rows"] = scan_table(path, fmt).select(pl.len()).collect(engine="streaming").item()
        described.append(entry)
    return described


def count_input_rows(config: IngestConfig, plan_dir: str | Path | None = None) -> int:
    """The input's row count without reading its rows into memory: the cached plan's, parquet metadata, or a streaming
    count (what the shard sensor and the ingest check need)."""
    files = input_files(config)
    if files is None:
        return read_input(config).height  # image folders, tars, COCO: small and local
    plan_dir = Path(plan_dir) if plan_dir else None
    described = _describe(files, config, plan_dir)
    if plan_dir is not None and plan_dir.exists():
        _remember(plan_dir, described)
    return _total_rows(config, described)


def _total_rows(config: IngestConfig, described: list[dict]) -> int:
    total = sum(f["rows"] for f in described)
    if total == 0:  # caught before any output exists: empty shards would later pass as complete
        raise ValueError(f"{config.input}: no rows to ingest (an empty {described[0]['fmt']} input)")
    return total


def _remember(plan_dir: Path, described: list[dict]) -> None:
    cache = {f["path"]: {k: v for k, v in f.items() if k != "path"} for f in described}
    _write_atomic(plan_dir / "files.json", lambda p: p.write_text(json.dumps(cache, indent=1, sort_keys=True)))


def plan_input(config: IngestConfig, plan_dir: str | Path) -> Plan:
    """The input's plan, from `plan_dir` when it was made from the same files (size, mtime) and settings, else made
    now (one streaming pass) and stored there. Raises before writing anything when the input is missing, malformed or
    has no rows."""
    plan_dir = Path(plan_dir).resolve()  # work items carry absolute paths: workers may run in other folders
    files = input_files(config)
    if files is None:
        return _plan_eager(config, plan_dir)
    described = _describe(files, config, plan_dir)
    total = _total_rows(config, described)
    key = _plan_key(config, described)
    meta_path = plan_dir / "plan.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and all(os.path.exists(p) for p, _ in meta["parts"]):
            duplicates = np.load(plan_dir / meta["duplicates"])
            return Plan(meta["rows"], tuple((p, r) for p, r in meta["parts"]), False, duplicates)
    for entry in described:  # header or metadata only; the cached row counts may predate a change of url_col
        check_table(entry["path"], entry["fmt"], config.url_col, config.caption_col)
    (plan_dir / "staged").mkdir(parents=True, exist_ok=True)
    for entry in described:
        if entry["fmt"] != "parquet" and not (entry.get("staged") and os.path.exists(entry["staged"])):
            entry["staged"] = _stage(entry, plan_dir / "staged")
    _remember(plan_dir, described)
    parts = tuple((f["staged"] if f["fmt"] != "parquet" else f["path"], f["rows"]) for f in described)
    duplicates = duplicate_rows(parts, config, total)
    name = f"duplicates-{key[:16]}.npy"
    _write_atomic(plan_dir / name, lambda p: _save_array(p, duplicates))
    meta = {"key": key, "rows": total, "parts": [list(p) for p in parts], "duplicates": name,
            "duplicate_rows": int(duplicates.size)}
    _write_atomic(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
    keep = {name, *(p for p, _ in parts)}
    for stale in [*plan_dir.glob("duplicates-*.npy"), *(plan_dir / "staged").glob("*.parquet")]:
        if stale.name != name and str(stale) not in keep:  # left by an earlier input or setting
            stale.unlink(missing_ok=True)
    return Plan(total, parts, False, duplicates)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:  # a file object: np.save would add `.npy` to a path
        np.save(file, array)


def _stage(entry: dict, folder: Path) -> str:
    """A csv/tsv/jsonl file copied into parquet (streaming), named by its path, size and mtime."""
    digest = hashlib.sha256(f"{entry['path']}|{entry['size']}|{entry['mtime_ns']}".encode()).hexdigest()[:20]
    dest = folder / f"{Path(entry['path']).name.split('.')[0]}-{digest}.parquet"
    source = scan_table(entry["path"], entry["fmt"])
    _write_atomic(dest, lambda p: source.sink_parquet(p, row_group_size=STAGE_ROW_GROUP))
    rows = pl.scan_parquet(dest).select(pl.len()).collect().item()
    if rows != entry["rows"]:
        raise ValueError(f"{entry['path']}: {rows} rows in its parquet copy, {entry['rows']} counted")
    return str(dest)


def duplicate_rows(parts: tuple[tuple[str, int], ...], config: IngestConfig, total: int) -> np.ndarray:
    """Sorted global indices of the rows whose key an earlier valid row has (`prepare_rows`' rule, streamed): one pass
    in batches of url and caption, keeping a 64-bit hash and an index per valid row. Also raises, as `read_input`
    does, when no valid row holds an http(s) URL while `local_paths` is off."""
    key = dedupe_key(config, "table")
    index_type = np.uint32 if total < 2**32 else np.int64
    hashes, indices, first_url, any_http, start = [], [], None, False, 0
    for path, rows in parts:
        frame = normalize_table(pl.scan_parquet(path).select(config.url_col, config.caption_col), config.url_col,
                                config.caption_col)
        for offset in range(0, rows, BATCH_ROWS):
            batch = frame.slice(offset, BATCH_ROWS).with_columns(
                _i=pl.int_range(pl.len(), dtype=pl.Int64) + start + offset,
                _ok=pl.col("source_error").is_null() & pl.col("url").is_not_null(),
            ).collect()
            if not config.local_paths and not any_http:
                urls = batch.filter("_ok")["url"]
                first_url = first_url if first_url is not None or urls.is_empty() else urls[0]
                any_http = bool(urls.str.contains(r"(?i)^https?://").any())
            valid = batch.filter(pl.col("_ok") & invalid_reason(config.max_caption_chars).is_null())
            hashes.append(valid.select(_key_expr(key).hash(HASH_SEED))[:, 0].to_numpy())
            indices.append(valid["_i"].to_numpy().astype(index_type))
        start += rows
    if not config.local_paths and first_url is not None and not any_http:
        raise ValueError(f"{config.input}: column {config.url_col!r} holds no http(s) URL (first: {first_url!r}); a "
                         "table of local files needs ingest.local_paths=true (and ingest.data_root, the folder they "
                         "lie in)")
    hashes, indices = np.concatenate(hashes), np.concatenate(indices)
    order = np.argsort(hashes, kind="stable")  # indices rise with input order: a run's first is its earliest row
    hashes = hashes[order]
    repeat = np.zeros(hashes.size, dtype=bool)
    np.equal(hashes[1:], hashes[:-1], out=repeat[1:])
    del hashes
    return np.sort(indices[order[repeat]].astype(np.int64))


def _plan_eager(config: IngestConfig, plan_dir: Path) -> Plan:
    """Image folders, webdataset tars and COCO: read whole (they are local and small), prepared, and written to the
    plan folder as one parquet file that the work items slice."""
    fmt = detect_format(config.input) if config.input_format == "auto" else config.input_format
    rows = prepare_rows(read_input(config), config, dedupe_key(config, fmt))
    plan_dir.mkdir(parents=True, exist_ok=True)
    path = plan_dir / "rows.parquet"
    _write_atomic(path, lambda p: rows.write_parquet(p, row_group_size=STAGE_ROW_GROUP))
    return Plan(rows.height, ((str(path.resolve()), rows.height),), True, np.empty(0, dtype=np.int64))
