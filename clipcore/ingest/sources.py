"""Caption sources, img2dataset-compatible: URL lists (parquet, csv, tsv, jsonl, plain or gzipped), local
image folders with sidecar `.txt` captions, webdataset tar shards and COCO-style captions JSON.

Every reader returns the same table: `url` (an http(s) URL, a local path, or `<shard>.tar#<member>`),
`caption`, `source_error` (a reason when the row is unusable before any fetch) and the input's extra
columns. Structural problems (missing file or column, unknown format, an input with no rows) raise before any
work starts.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath

import polars as pl

from clipcore.config import IngestConfig

TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl")
FORMATS = (*TABLE_FORMATS, "folder", "webdataset", "coco")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
REPLACEMENT = "\ufffd"  # what a lossy UTF-8 decode puts where bytes were not UTF-8


def table_format(path: str | Path) -> str | None:
    """The URL-list format a file name implies (`a.csv`, `a.jsonl.gz`, `part-0.parquet`), or None."""
    suffixes = [s.lstrip(".") for s in Path(path).suffixes if s != ".gz"]
    return suffixes[-1] if suffixes and suffixes[-1] in TABLE_FORMATS else None


def detect_format(path: str | Path) -> str:
    """The input format implied by a path: a folder (of tar shards: webdataset; of URL-list files and no images: their
    format; else an image folder), `*.tar`, `*.json` (COCO) or a table suffix (`.gz` allowed)."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.tar")):
            return "webdataset"
        files = [p for p in path.iterdir() if p.is_file()]
        tables = sorted(fmt for p in files if (fmt := table_format(p)))
        if tables and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            return tables[0]
        return "folder"
    suffixes = [s.lstrip(".") for s in path.suffixes if s != ".gz"]
    name = suffixes[-1] if suffixes else ""
    if name in TABLE_FORMATS:
        return name
    if name == "tar":
        return "webdataset"
    if name == "json":
        return "coco"
    raise ValueError(f"{path}: cannot tell the input format from the name; pass one of {FORMATS}")


def scan_table(path: str | Path, fmt: str) -> pl.LazyFrame:
    """A URL-list file as a lazy frame (nothing read yet); csv/tsv decoded lossily, so one row with bad bytes becomes
    a recorded reason, not a crash."""
    if fmt == "parquet":
        return pl.scan_parquet(path)
    if fmt == "jsonl":
        return pl.scan_ndjson(path, infer_schema_length=None)
    return pl.scan_csv(path, separator="\t" if fmt == "tsv" else ",", encoding="utf8-lossy", infer_schema=False,
                       quote_char=None if fmt == "tsv" else '"')


def check_table(path: str | Path, fmt: str, url_col: str, caption_col: str) -> list[str]:
    """The columns of URL-list file `path`, read from its header or metadata only; raises (naming the file) when it is
    missing, empty, unreadable as `fmt` or lacks `url_col` / `caption_col`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.stat().st_size == 0:  # polars would say "empty CSV" or fail to infer a type, without the file's name
        raise ValueError(f"{path}: the input is empty (0 bytes); nothing to ingest")
    try:
        columns = scan_table(path, fmt).collect_schema().names()
    except pl.exceptions.PolarsError as err:  # a stale input_format: parquet bytes read as jsonl, csv as parquet...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot be read as {fmt} (ingest.input_format): {reason}") from err
    for column, role in ((url_col, "url"), (caption_col, "caption")):
        if column not in columns:
            other = next((f for f, sep in (("csv", ","), ("tsv", "\t")) if f != fmt and sep in columns[0]), None)
            hint = f" (one column: is it {other}? ingest.input_format)" if len(columns) == 1 and other else ""
            raise ValueError(f"{path}: no {role} column {column!r} (--{role}-col, ingest.{role}_col); columns are "
                             f"{columns}{hint}")
    return columns


def read_url_list(path: str | Path, fmt: str, url_col: str, caption_col: str) -> pl.DataFrame:
    """A URL list: every column kept; `url_col` and `caption_col` renamed to `url` and `caption`."""
    check_table(path, fmt, url_col, caption_col)
    try:
        table = scan_table(path, fmt).collect()
    except pl.exceptions.PolarsError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot be read as {fmt} (ingest.input_format): {reason}") from err
    return normalize_table(table, url_col, caption_col)


def normalize_table(table: pl.DataFrame | pl.LazyFrame, url_col: str, caption_col: str):
    """A URL list's rows in the common layout: `url_col` and `caption_col` renamed to `url` and `caption` (as strings),
    `source_error` appended (`caption_not_utf8` where a lossy decode replaced bytes; such a caption becomes null).
    Eager or lazy, the same expressions: a slice read by a worker equals the same rows of the whole table."""
    table = table.rename({url_col: "url", caption_col: "caption"}).with_columns(
        pl.col("url").cast(pl.String), pl.col("caption").cast(pl.String)
    )
    not_utf8 = pl.col("caption").str.contains(REPLACEMENT, literal=True).fill_null(False)
    return table.with_columns(
        source_error=pl.when(not_utf8).then(pl.lit("caption_not_utf8")).otherwise(pl.lit(None, pl.String)),
        caption=pl.when(not_utf8).then(pl.lit(None, pl.String)).otherwise(pl.col("caption")),
    )


MAX_SIDECAR_BYTES = 1 << 16  # a caption file larger than this is not a caption


def read_sidecar(sidecar: Path, root: str) -> tuple[str | None, str | None]:
    """(caption, error) of an image's sidecar `.txt`: read only when it resolves inside `root` (symlinks followed
    first) and is a regular file of at most MAX_SIDECAR_BYTES; (None, None) when there is none."""
    real = os.path.realpath(sidecar)
    if not os.path.lexists(sidecar):
        return None, None
    if not real.startswith(os.path.join(root, "")):
        return None, "caption_outside_data_root"
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)  # a fifo must not hang the reader
    except OSError:
        return None, "caption_unreadable"
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "caption_not_a_regular_file"
        if info.st_size > MAX_SIDECAR_BYTES:
            return None, "caption_too_long"
        try:
            return file.read().decode("utf-8").strip(), None
        except UnicodeDecodeError:
            return None, "caption_not_utf8"


def read_folder(path: str | Path) -> pl.DataFrame:
    """Images under `path` (recursively) with the caption in a sidecar `<stem>.txt` (null when missing). Sidecars are
    confined to the folder like the images (see `read_sidecar`); an image's own path is checked when it is read."""
    rows = []
    root = os.path.realpath(path)
    for image in sorted(p for p in Path(path).resolve().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption, error = read_sidecar(image.with_suffix(".txt"), root)
        rows.append({"url": str(image), "caption": caption, "source_error": error})
    return pl.DataFrame(rows, schema={"url": pl.String, "caption": pl.String, "source_error": pl.String})


def unsafe_member(name: str) -> bool:
    """A tar member path that could escape an extraction folder: absolute, or with a `..` part."""
    pure = PurePosixPath(name)
    return pure.is_absolute() or name.startswith("\\") or ".." in pure.parts


def read_webdataset(paths: list[Path]) -> pl.DataFrame:
    """One row per sample (`key.jpg|png|webp...` + `key.txt`) in open_clip's tar layout.

    A key used by more than one sample (a tar grown with `tar -r`, two tars concatenated) still gives every sample
    its row: a sample takes its key's first image and first caption, a second image or caption of the key opens
    the key's next sample, and each sample after a key's first is rejected as `duplicate_key`. The first is the
    one kept because `<shard>.tar#<member>` names are ambiguous and the fetcher reads a name's first occurrence.
    """
    rows = []
    for shard in paths:
        try:
            tar = tarfile.open(shard)  # noqa: SIM115 (closed below)
        except tarfile.ReadError as err:
            raise ValueError(f"{shard}: not a tar shard (ingest.input_format=webdataset)") from err
        with tar:
            samples = _group_samples(shard, tar, rows)
        for key, sample, repeat in samples:
            if "image" not in sample:
                error = "duplicate_key" if repeat else "no_image"
                rows.append({"url": f"{shard}#{key}", "caption": sample.get("caption"), "source_error": error})
                continue
            rows.append({"url": f"{shard}#{sample['image']}", "caption": sample.get("caption"),
                         "source_error": "duplicate_key" if repeat else sample.get("caption_error")})
    return pl.DataFrame(rows, schema={"url": pl.String, "caption": pl.String, "source_error": pl.String})


def _group_samples(shard: Path, tar: tarfile.TarFile, rows: list[dict]) -> list[tuple[str, dict, bool]]:
    """A tar's samples in member order as (key, {image, caption, caption_error}, repeats an earlier key); unsafe
    members go straight to `rows` with their reason."""
    samples: list[tuple[str, dict, bool]] = []
    by_key: dict[str, list[dict]] = {}
    for member in tar:
        if not member.isfile():
            continue
        if unsafe_member(member.name):
            rows.append({"url": f"{shard}#{member.name}", "caption": None, "source_error": "unsafe_tar_member"})
            continue
        key, _, ext = member.name.rpartition(".")
        role = "image" if f".{ext.lower()}" in IMAGE_SUFFIXES else "caption" if ext == "txt" else None
        same_key = by_key.setdefault(key, [])
        if role is None:  # another file of a sample (json, cls, ...): it only makes its key known
            sample = same_key[0] if same_key else None
        else:  # the key's earliest sample still missing this role
            sample = next((s for s in same_key if role not in s), None)
        if sample is None:  # the key's first member, or a second image / caption of it: a sample of its own
            sample = {}
            same_key.append(sample)
            samples.append((key, sample, len(same_key) > 1))
        if role == "image":
            sample["image"] = member.name
        elif role == "caption":
            try:
                sample["caption"] = tar.extractfile(member).read().decode("utf-8").strip()
            except UnicodeDecodeError:
                sample["caption"], sample["caption_error"] = None, "caption_not_utf8"
    return samples


def read_coco(path: str | Path, image_root: str | Path | None = None) -> pl.DataFrame:
    """COCO captions JSON: one row per annotation; images resolve under `image_root` (default: the JSON's folder),
    or to `coco_url` when the file is not there."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not COCO captions JSON (ingest.input_format=coco): {err}") from err
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: not COCO captions JSON (no {key!r} list)")
    root = (Path(image_root) if image_root else path.parent).resolve()
    images = {}
    for image in data["images"]:
        local = root / image["file_name"]
        images[image["id"]] = str(local) if local.exists() or "coco_url" not in image else image["coco_url"]
    rows = [{"url": images.get(a["image_id"]), "caption": a.get("caption"),
             "source_error": None if a["image_id"] in images else "unknown_image_id", "image_id": a["image_id"]}
            for a in data["annotations"]]
    return pl.DataFrame(rows, schema={"url": pl.String, "caption": pl.String, "source_error": pl.String,
                                      "image_id": pl.Int64})


def read_input(config: IngestConfig) -> pl.DataFrame:
    """`read_source` of the ingest config's input; a URL list whose `url_col` holds no http(s) URL at all while
    `local_paths` is off (every row would fail: it lists local files) raises ValueError before any work starts."""
    table = read_source(config.input, config.input_format, config.url_col, config.caption_col, config.image_root)
    fmt = detect_format(config.input) if config.input_format == "auto" else config.input_format
    if fmt in TABLE_FORMATS and not config.local_paths:
        urls = table.filter(pl.col("source_error").is_null())["url"].drop_nulls()
        if urls.len() and not urls.str.contains(r"(?i)^https?://").any():
            raise ValueError(f"{config.input}: column {config.url_col!r} holds no http(s) URL (first: {urls[0]!r}); "
                             "a table of local files needs ingest.local_paths=true (and ingest.data_root, the folder "
                             "they lie in)")
    return table


def read_source(path: str | Path, fmt: str = "auto", url_col: str = "url", caption_col: str = "caption",
                image_root: str | None = None) -> pl.DataFrame:
    """Read any supported input into the common table (url, caption, source_error, extra columns)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    table = _read_any(path, fmt, url_col, caption_col, image_root)
    if table.height == 0:  # caught here, before any output exists: empty shards would later pass as complete
        raise ValueError(f"{path}: no rows to ingest (an empty {fmt} input)")
    return table


def _auto_hint(path: Path) -> str:
    """`; auto reads it as <format>` where the name tells one, for errors about a stale `input_format`."""
    try:
        return f"; auto reads it as {detect_format(path)}"
    except ValueError:
        return ""


def _read_any(path: Path, fmt: str, url_col: str, caption_col: str, image_root: str | None) -> pl.DataFrame:
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown input format {fmt!r}; choose one of {FORMATS} or auto")
    if (fmt == "folder") != path.is_dir() and not (fmt == "webdataset" and path.is_dir()):
        what = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"{path} is {what}, not {'a folder' if fmt == 'folder' else f'a {fmt} file'} "
                         f"(ingest.input_format={fmt}){_auto_hint(path)}")
    if fmt in TABLE_FORMATS:
        return read_url_list(path, fmt, url_col, caption_col)
    if fmt == "folder":
        return read_folder(path)
    if fmt == "webdataset":
        shards = sorted(path.resolve().glob("*.tar")) if path.is_dir() else [path.resolve()]
        if not shards:
            raise ValueError(f"{path}: no *.tar shards in the folder (ingest.input_format=webdataset)")
        return read_webdataset(shards)
    return read_coco(path, image_root)
