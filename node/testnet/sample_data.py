"""The demo's sample dataset: daily units sold of four products over two
years, shipped as ``node/data/sales.csv`` and regenerated exactly by
:func:`sales_csv` (integer arithmetic only: a weekly rhythm, a yearly
season, a slow trend per product, and hash-derived noise).

    python -m node.testnet.sample_data > node/data/sales.csv
"""

from __future__ import annotations

import datetime
import hashlib
from importlib import resources
from pathlib import Path

PRODUCTS = (("apples", 120, 3), ("pears", 80, -1), ("plums", 45, 2), ("figs", 20, 1))  # name, base units, trend per 30 days
START = datetime.date(2025, 1, 1)
DAYS = 730
WEEKLY = (0, -6, -4, -2, 3, 12, 9)  # Monday .. Sunday
SEASON = (-12, -10, -4, 2, 8, 14, 18, 16, 8, 0, -6, -10)  # January .. December, percent


def sales_csv() -> str:
    rows = ["day,product,units,price_cents"]
    for offset in range(DAYS):
        day = START + datetime.timedelta(days=offset)
        for name, base, trend in PRODUCTS:
            noise = hashlib.sha256(f"{name}:{day.isoformat()}".encode()).digest()[0] % 15 - 7
            units = base * (100 + SEASON[day.month - 1]) // 100 + WEEKLY[day.weekday()] + trend * offset // 30 + noise
            price = 100 + 35 * len(name) + (offset // 91) * 5  # a price step each quarter
            rows.append(f"{day.isoformat()},{name},{max(units, 0)},{price}")
    return "\n".join(rows) + "\n"


def sales_path() -> Path:
    """The shipped copy (inside the installed package)."""
    return Path(str(resources.files("node") / "data" / "sales.csv"))


if __name__ == "__main__":
    print(sales_csv(), end="")
