"""Readers: every local format, GLUE quoting traps, hub ids that cannot be reached."""

import json

import pandas as pd
import pytest

from slimformer.data.readers import detect_format, read_table
from slimformer.data.text_corpus import corpus_sentences, sentence_splits
from slimformer.errors import DataError

ROWS = [{"text": 'he said "hi', "label": "positive"}, {"text": "bad", "label": "negative"}]


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl", "parquet"])
def test_local_formats(tmp_path, suffix):
    path = tmp_path / f"d.{suffix}"
    df = pd.DataFrame(ROWS)
    if suffix == "csv":
        df.to_csv(path, index=False)
    elif suffix == "json":
        path.write_text(json.dumps(ROWS))
    elif suffix == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    else:
        df.to_parquet(path)
    ds = read_table(str(path))
    assert ds["text"] == [r["text"] for r in ROWS] and ds["label"] == ["positive", "negative"]


def test_tsv_keeps_stray_quotes_and_strips_padded_headers(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('sentence \tlabel\n"odd quote here \t1\nfine \t0\n', encoding="utf-8")
    ds = read_table(str(path))
    assert len(ds) == 2 and ds.column_names == ["sentence", "label"]
    assert ds[0]["sentence"].startswith('"odd')


def test_headerless_tsv_with_names(tmp_path):
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tGood sentence.\ngj04\t0\t*\tBad sentence.\n", encoding="utf-8")
    ds = read_table(str(path), header=False, column_names=["source", "label", "mark", "text"])
    assert ds["label"] == [1, 0] and ds["text"][1] == "Bad sentence."


def test_real_sst2_dev_row_count():
    from tests.conftest import SST2

    assert len(read_table(str(SST2 / "dev.tsv"))) == 872


def test_unreachable_hub_id_is_a_clear_error():
    assert detect_format("someone/some-dataset") == "hub"
    with pytest.raises(DataError, match="neither an existing local file"):
        read_table("someone/definitely-not-a-dataset-xyz")


def test_stdlib_corpus_splits_do_not_overlap():
    train, evl = sentence_splits("stdlib:pydoc_data.topics", eval_pairs=50, seed=0)
    held = set(evl["text"]) | set(evl["text_pair"])
    assert len(evl) == 50 and not held & set(train["text"])
    assert len(corpus_sentences("stdlib:pydoc_data.topics")) > 1000
