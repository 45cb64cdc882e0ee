"""Read tabular data (local CSV/TSV/JSON/JSONL/Parquet or a hub id) into a ``datasets.Dataset``.

Checks happen here, before any model is loaded: a missing file, bytes that are not UTF-8
(the line is named), an empty table, a column that does not exist.
"""

import csv
from pathlib import Path
from typing import Literal

import datasets

from slimformer.errors import DataError

Format = Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "hub", "conll"]
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".txt": "tsv",
}


def detect_format(source: str, fmt: Format = "auto") -> str:
    """Pick the reader from the file suffix; a non-path source is taken as a hub dataset id."""
    if fmt != "auto":
        return fmt
    suffix = Path(source).suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    if Path(source).exists():
        raise DataError(
            f"Cannot tell the format of {source!r} from its suffix; set data.format "
            f"to one of csv, tsv, json, jsonl, parquet."
        )
    return "hub"


def check_utf8(path: Path) -> None:
    """Fail with the first line that is not valid UTF-8, instead of a decoder traceback later."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} line {lineno} is not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                    f"{e.start + 1}). Re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
                ) from None


def read_table(
    source: str,
    fmt: Format = "auto",
    split: str = "train",
    header: bool = True,
    column_names: list[str] | None = None,
) -> datasets.Dataset:
    """Load one split as a Dataset; GLUE-style TSVs are read without quote handling."""
    kind = detect_format(source, fmt)
    if kind == "hub":
        return _read_hub(source, split)
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"Data file {source!r} does not exist (or is not a file). "
            f"Check the path in data.train / data.eval; relative paths are resolved "
            f"from the directory you run slimformer in."
        )
    if kind != "parquet":
        check_utf8(path)
    empty = DataError(f"{path} has no rows. Point data.train / data.eval to a file with data.")
    try:
        ds = _read_local(path, kind, header, column_names)
    except DataError:
        raise
    except Exception as e:  # datasets/pyarrow wrap parse errors in many types
        if "corresponds to no data" in str(e) or path.stat().st_size == 0:
            raise empty from None
        raise DataError(
            f"Could not read {path} as {kind}: {e}. Check data.format and the file's contents."
        ) from e
    if len(ds) == 0:
        raise empty
    return ds


def _read_local(
    path: Path, kind: str, header: bool, column_names: list[str] | None
) -> datasets.Dataset:
    if kind in ("csv", "tsv"):
        kwargs = dict(
            sep="\t" if kind == "tsv" else ",",
            quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL,
            keep_default_na=False,
        )
        if not header or column_names:
            kwargs["header"] = 0 if header else None
            if column_names:
                kwargs["names"] = column_names
        ds = datasets.load_dataset("csv", data_files=str(path), split="train", **kwargs)
        # Some TSVs (GLUE SST-2) put a space before each tab: strip column names and text.
        ds = ds.rename_columns({c: c.strip() for c in ds.column_names if c != c.strip()})
        return ds
    if kind in ("json", "jsonl"):
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if kind == "parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    raise DataError(f"Unknown data format {kind!r}; use csv, tsv, json, jsonl, parquet or hub.")


def _read_hub(name: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(
            f"{name!r} is neither an existing local file nor a loadable hub dataset ({e}). "
            f"Check the path, or the dataset id and split ({split!r}) and your network."
        ) from e


def require_columns(ds: datasets.Dataset, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(
            f"Column(s) {missing} not found in {source}; it has {ds.column_names}. "
            f"Set data.text_column / data.text_pair_column / data.label_column to existing columns."
        )


PLAIN_TEXT_SUFFIXES = (".txt", ".raw", ".tokens")


def read_unlabeled(source: str, text_column: str = "text") -> datasets.Dataset:
    """Unlabeled text: a plain-text file (``.txt``, ``.raw``, ``.tokens``) is one example a line
    (blank lines skipped, read lazily by ``datasets``, so a corpus larger than RAM works);
    anything else is a table or a hub dataset read like training data."""
    path = Path(source)
    if path.suffix.lower() in PLAIN_TEXT_SUFFIXES and path.is_file():
        check_utf8(path)
        ds = datasets.load_dataset("text", data_files=str(path), split="train")
        ds = ds.filter(lambda row: bool(row["text"].strip()), desc="skip blank lines")
        if len(ds) == 0:
            raise DataError(f"{source} has no non-blank lines to label.")
        return ds.rename_column("text", text_column) if text_column != "text" else ds
    return read_table(source)
