"""Fixtures for the ML unit tests: tiny NASA-format files and the real FD001 location."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[3]
FD001_DIR = PROJECT_ROOT.parent / "shared" / "data" / "cmapss" / "FD001"


def nasa_rows(unit: int, n_cycles: int, offset: float = 0.0) -> list[list[float]]:
    """Rows of one engine in the 26-column NASA layout; sensor j (1-based) = offset+100*unit+cycle+j/100."""
    rows = []
    for c in range(1, n_cycles + 1):
        settings = [0.0, 0.0, 100.0]
        sensors = [offset + 100.0 * unit + c + j / 100.0 for j in range(1, 22)]
        rows.append([unit, c, *settings, *sensors])
    return rows


def write_nasa(path: Path, rows: list[list[float]]) -> None:
    path.write_text("\n".join(" ".join(f"{v:g}" for v in r) + " " for r in rows) + "\n")


@pytest.fixture
def tiny_cmapss(tmp_path: Path) -> Path:
    """Train: engines 1 (5 cycles) and 2 (3 cycles). Test: engines 1 (4 cycles, RUL 7) and 2 (2, RUL 200).

    Test sensors are offset by +1000 so anything fitted on them would show.
    """
    write_nasa(tmp_path / "train_FD009.txt", nasa_rows(1, 5) + nasa_rows(2, 3))
    write_nasa(tmp_path / "test_FD009.txt", nasa_rows(1, 4, 1000.0) + nasa_rows(2, 2, 1000.0))
    (tmp_path / "RUL_FD009.txt").write_text("7 \n200 \n")
    return tmp_path


@pytest.fixture
def fd001_dir() -> Path:
    if not (FD001_DIR / "train_FD001.txt").is_file():
        pytest.skip(f"real C-MAPSS FD001 data not found at {FD001_DIR}")
    return FD001_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
