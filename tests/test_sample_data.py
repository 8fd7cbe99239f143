"""The demo's dataset ships with the package and is exactly what its generator makes."""

import csv
import io

from node.testnet.sample_data import DAYS, PRODUCTS, sales_csv, sales_path


def test_shipped_dataset_is_the_generated_one():
    assert sales_path().read_text() == sales_csv()


def test_two_years_of_daily_rows_per_product():
    rows = list(csv.DictReader(io.StringIO(sales_csv())))
    assert len(rows) == DAYS * len(PRODUCTS)
    assert rows[0]["day"] == "2025-01-01" and rows[-1]["day"] == "2026-12-31"
    assert {r["product"] for r in rows} == {name for name, _, _ in PRODUCTS}
    assert all(int(r["units"]) >= 0 and int(r["price_cents"]) > 0 for r in rows)
