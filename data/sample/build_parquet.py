"""Rebuild reviews.parquet from reviews.csv: the same rows, with a typed rating column.

Run: .venv/bin/python data/sample/build_parquet.py
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

HERE = Path(__file__).parent
NAMES = ["id", "product", "region", "rating", "text"]

table = pacsv.read_csv(
    HERE / "reviews.csv",
    parse_options=pacsv.ParseOptions(newlines_in_values=True),
    convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in NAMES}, strings_can_be_null=False),
)
rating = table.column("rating")
numeric = pc.if_else(pc.match_substring_regex(rating, r"^\d+$"), rating, pa.scalar(None, pa.string()))
table = table.set_column(NAMES.index("rating"), "rating", pc.cast(numeric, pa.int8()))
table = table.replace_schema_metadata({"source": "batchsent sample reviews, written by the batchsent authors"})
pq.write_table(table, HERE / "reviews.parquet")
