"""Stage 1, ingest: the profile's raw file -> ``data/raw/<dataset>.parquet``.

Reads the file with the profile's read options, checks its header against the
profile (naming every missing and unexpected column), renames to snake_case and
writes one typed table. Values are not judged here: that is validation's job,
so a bad value quarantines a row instead of failing the whole read.

``python -m src.data.ingest --download`` fetches a profile's original file by URL
(taiwan_credit: the UCI zip), checks its sha256 and unpacks it into
``data/external/<dataset>/``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from src.common import PipelineError, run_main, write_table
from src.config import DownloadSpec, Profile, Settings, load_settings

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def candidate_files(settings: Settings) -> list[tuple[Path, str, dict[str, Any]]]:
    """Files that can feed this profile, in order of preference, with format and read options."""
    src = settings.profile.source
    found = [(settings.external_dir / src.file, src.format, src.read_options)]
    if src.download:
        dl = src.download
        found.append((settings.external_dir / dl.file, dl.format, dl.read_options))
    return found


def locate_raw_file(settings: Settings) -> tuple[Path, str, dict[str, Any]]:
    """Return the first raw file present, or fail saying where we looked and how to get it."""
    candidates = candidate_files(settings)
    for path, fmt, options in candidates:
        if path.is_file():
            return path, fmt, options
    src = settings.profile.source
    looked = ", ".join(str(p.relative_to(settings.paths.root)) for p, _, _ in candidates)
    hint = f" {src.instructions}" if src.instructions else ""
    home = f" Source: {src.homepage}." if src.homepage else ""
    raise PipelineError(
        f"no raw file for dataset '{settings.dataset}': looked for {looked}.{hint}{home}"
        f" Put the file there (or run `make data`, which links ../shared/data when it exists)."
    )


def read_raw(path: Path, fmt: str, read_options: dict[str, Any]) -> pd.DataFrame:
    """Read one raw file; pandas copes with quoted headers, CR/CRLF endings and 5e+05 numbers."""
    readers = {
        "csv": pd.read_csv,
        "xls": pd.read_excel,
        "xlsx": pd.read_excel,
        "parquet": pd.read_parquet,
    }
    if fmt not in readers:
        raise PipelineError(f"{path}: unsupported format '{fmt}' (use one of {', '.join(readers)})")
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError)
    if fmt in ("xls", "xlsx"):
        # xlrd/openpyxl raise assorted types (XLRDError, CompDocError, IndexError, ...) on a
        # truncated or corrupt workbook; any of them means "this file is not a usable workbook".
        errors = (Exception,)
    try:
        df = readers[fmt](path, **read_options)
    except errors as exc:
        raise PipelineError(f"{path}: cannot be read as {fmt}: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def join_on_key(left: pd.DataFrame, right: pd.DataFrame, key: str, left_name: str, right_name: str,
                ) -> pd.DataFrame:
    """One row per key from both sides (left's order); a key missing from a side, repeated, or absent is an
    error naming the keys, never a row silently lost."""
    for frame, name in ((left, left_name), (right, right_name)):
        if key not in frame.columns:
            raise PipelineError(f"{name} has no column '{key}' to join on (source.join.on); it has "
                                f"{', '.join(map(str, frame.columns))}")
        repeated = frame[key][frame[key].duplicated()].unique().tolist()
        if repeated:
            raise PipelineError(f"{name}: {len(repeated)} value(s) of '{key}' appear more than once, e.g. "
                                f"{', '.join(map(str, repeated[:5]))}: the join needs one row per key on each side")
    shared = [c for c in right.columns if c != key and c in left.columns]
    if shared:
        raise PipelineError(f"{left_name} and {right_name} both have column(s) {', '.join(shared)}: "
                            "each column must come from one side")
    problems = []
    for keys, others, words in ((left[key], right[key], f"in {left_name} but not {right_name}"),
                                (right[key], left[key], f"in {right_name} but not {left_name}")):
        alone = keys[~keys.isin(others)]
        if len(alone):
            problems.append(f"{len(alone)} {key}(s) {words}, e.g. {', '.join(map(str, alone.head(5)))}")
    if problems:
        raise PipelineError(f"joining {left_name} and {right_name} on {key} would lose rows: {'; '.join(problems)}")
    merged = left.merge(right, on=key, how="left", validate="one_to_one")  # the left side's row order
    log.info("joined %s and %s on %s: %d rows", left_name, right_name, key, len(merged))
    return merged


def conform_columns(df: pd.DataFrame, profile: Profile, source: str = "raw file") -> pd.DataFrame:
    """Rename raw columns to the profile's names; fail naming missing and unexpected columns."""
    unexpected = [c for c in df.columns if c not in profile.rename]
    renamed = df.rename(columns=profile.rename)
    duplicated = sorted({c for c in renamed.columns if list(renamed.columns).count(c) > 1})
    missing = [c for c in profile.expected_columns if c not in renamed.columns]
    if unexpected or missing or duplicated:
        parts = []
        if missing:
            raw_names = {v: k for k, v in profile.rename.items()}
            parts.append("missing columns: " + ", ".join(raw_names.get(c, c) for c in missing))
        if unexpected:
            parts.append("unexpected columns: " + ", ".join(unexpected))
        if duplicated:
            parts.append("columns given twice (under two spellings): " + ", ".join(duplicated))
        raise PipelineError(
            f"{source} does not match profile '{profile.name}': {'; '.join(parts)}."
            f" Expected: {', '.join(k for k in dict.fromkeys(profile.rename))}"
        )
    return renamed[profile.expected_columns]


def ingest(df: pd.DataFrame, profile: Profile, sample_rows: int | None = None, seed: int = 0,
           source: str = "raw file") -> pd.DataFrame:
    """Conform a raw table to the profile and optionally down-sample it (seeded, order kept)."""
    table = conform_columns(df, profile, source)
    if sample_rows is not None and len(table) > sample_rows:
        table = table.sample(n=sample_rows, random_state=seed).sort_index()
        log.info("sampled %d of %d rows (ingest.sample_rows)", len(table), len(df))
    return table.reset_index(drop=True)


def download(spec: DownloadSpec, dest_dir: Path, timeout: float) -> Path:
    """Fetch ``spec.url``, verify its sha256, unpack ``spec.member`` into ``dest_dir``.

    The download goes to a temporary file first, so an interrupted or tampered
    transfer never leaves a half-written raw file behind.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / spec.file
    log.info("downloading %s", spec.url)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        tmp_file = Path(tmp) / "download"
        try:
            with urllib.request.urlopen(spec.url, timeout=timeout) as resp, tmp_file.open("wb") as out:
                total = int(resp.headers.get("Content-Length") or 0)
                done, next_report = 0, 0.0
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if time.monotonic() >= next_report:
                        log.info("  %.1f MB%s", done / 1e6, f" of {total / 1e6:.1f} MB" if total else "")
                        next_report = time.monotonic() + 2
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError, ValueError) as exc:
            # ValueError: a URL urllib cannot parse; HTTPException: a reply that is not HTTP.
            detail = str(exc).strip() or type(exc).__name__
            if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
                detail = f"the server's reply is not valid HTTP ({type(exc).__name__}: {detail!r})"
            raise PipelineError(f"download of {spec.url} failed: {detail}") from exc
        if total and done != total:
            # http.client's read(n) returns b"" on a dropped connection instead of raising.
            raise PipelineError(f"download of {spec.url} was cut short: got {done} of {total} bytes; try again")
        got = digest.hexdigest()
        if spec.sha256 and got != spec.sha256.strip().lower():
            raise PipelineError(
                f"download of {spec.url} has sha256 {got}, expected {spec.sha256}: refusing to use it"
            )
        if not spec.sha256:
            log.warning("no sha256 pinned for %s; downloaded file has sha256 %s (pin it in params.yaml)",
                        spec.url, got)
        else:
            log.info("sha256 verified: %s", got)
        if spec.member:
            try:
                with zipfile.ZipFile(tmp_file) as zf, zf.open(spec.member) as src, \
                        (Path(tmp) / "member").open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            except KeyError as exc:
                raise PipelineError(
                    f"{spec.url}: the zip has no member '{spec.member}'; it holds: {_zip_names(tmp_file)}"
                ) from exc
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error, OSError) as exc:
                raise PipelineError(f"{spec.url}: cannot extract '{spec.member}': {exc}") from exc
            (Path(tmp) / "member").replace(target)
        else:
            tmp_file.replace(target)
    log.info("saved %s", target)
    return target


def _zip_names(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return ", ".join(repr(n) for n in names) if names else "nothing"


def run(settings: Settings) -> pd.DataFrame:
    """Ingest the configured dataset and write ``data/raw/<dataset>.parquet``."""
    path, fmt, options = locate_raw_file(settings)
    started = time.perf_counter()
    raw = read_raw(path, fmt, options)
    log.info("read %d rows x %d columns from %s in %.2f s", len(raw), raw.shape[1],
             path.relative_to(settings.paths.root), time.perf_counter() - started)
    expected = settings.profile.source.sha256
    if expected and path.name == settings.profile.source.file:
        got = sha256_of(path)
        if got != expected:
            log.warning("%s has sha256 %s, not the reference copy's %s: figures may differ from the docs",
                        path.name, got, expected)
    join = settings.profile.source.join
    if join is not None:
        other = settings.external_dir / join.file
        if not other.is_file():
            raise PipelineError(f"no file {other.relative_to(settings.paths.root)} to join on {join.on} (source.join "
                                f"of profile '{settings.dataset}'). {settings.profile.source.instructions}")
        raw = join_on_key(raw, read_raw(other, join.format, join.read_options), join.on, path.name, other.name)
    table = ingest(raw, settings.profile, settings.ingest.sample_rows, settings.ingest.sample_seed,
                   source=str(path.relative_to(settings.paths.root)))
    write_table(table, settings.raw_table)
    log.info("wrote %d rows to %s", len(table), settings.raw_table.relative_to(settings.paths.root))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--download", action="store_true",
                        help="fetch the profile's original file by URL (sha256-checked) into data/external/")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    settings = load_settings(args.params)
    if args.download:
        spec = settings.profile.source.download
        if spec is None:
            raise PipelineError(
                f"profile '{settings.dataset}' has no download URL; {settings.profile.source.instructions}"
            )
        download(spec, settings.external_dir, settings.ingest.download_timeout)
        return
    run(settings)


if __name__ == "__main__":
    run_main(main)
