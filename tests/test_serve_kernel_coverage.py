"""Kernel coverage over time in the service: a kernel configured with kernel_coverage runs its
campaigns with the probe, its stat points count the kernel functions reached, and the dashboard
draws them per kernel; a database of the first schema gains the column and keeps its points."""

import sqlite3
import time
import urllib.request

import pytest

from fuzz.execute.kernels import model_for
from fuzz.serve import records
from fuzz.errors import ToolError
from fuzz.serve.config import KernelConfig, ServeConfig, load_config
from fuzz.serve.db import MIGRATIONS, Database
from fuzz.serve.http import Service
from fuzz.serve.manager import Manager
from targets.coverage import FEEDBACK
from test_serve_fakes import fake_kernel


def test_kernel_coverage_is_a_per_kernel_switch_of_the_config(tmp_path):
    path = tmp_path / "procfuzz.toml"
    path.write_text('[[kernel]]\npin = "6.1-cloud"\nkernel_coverage = true\n[[kernel]]\npin = "6.12-cloud"\n')
    assert [k.spec.coverage for k in load_config(path).kernels] == [FEEDBACK, None]
    path.write_text('[[kernel]]\nkernel_coverage = "yes"\n')
    with pytest.raises(ToolError, match="kernel_coverage must be true or false"):
        load_config(path)


def test_a_first_schema_database_gains_the_column_and_keeps_its_points(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0].format(id="INTEGER PRIMARY KEY AUTOINCREMENT"))
        conn.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL);"
                           "INSERT INTO schema_version VALUES (1);"
                           "INSERT INTO kernels (name, label) VALUES ('old', 'k=1');"
                           "INSERT INTO campaigns (kernel_id, started, out_dir) VALUES (1, 0, 'out');"
                           "INSERT INTO stat_points VALUES (1, 60, 10, 1.5, 7, 3, 0, 1);")
    db = Database(path)
    records.add_stat_point(db, records.StatPoint(1, 120, 20, 2.0, 9, 4, 0, 1, kernel_functions=12))
    assert [(p["minute"], p["programs"], p["kernel_functions"]) for p in records.stat_points(db)] == \
        [(60, 10, 0), (120, 20, 12)]
    db.close()


def test_the_dashboard_shows_kernel_functions_reached_over_time(tmp_path):
    config = ServeConfig(kernels=(KernelConfig("cov", "6.1-cloud", kernel_coverage=True),), guests=1,
                         budget=3600, follow_up=False)
    manager = Manager(config, tmp_path / "state", fake_kernel, model_for, stat_seconds=1, scan_seconds=0.5).start()
    server = Service(("127.0.0.1", 0), manager, None)
    server.serve_in_thread()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        deadline = time.monotonic() + 90
        while not any(p["kernel_functions"] for p in records.stat_points(manager.db)):
            assert time.monotonic() < deadline, "no stat point with kernel functions"
            time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/", timeout=30) as answer:
            page = answer.read().decode()
        assert "kernel functions reached" in page
    finally:
        server.shutdown()
        server.server_close()
        manager.stop()
