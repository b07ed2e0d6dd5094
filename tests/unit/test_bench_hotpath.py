"""The socket-free per-request measurement and the A/B hop table (no load, no processes)."""


from bench import hop, hotpath


async def test_hotpath_drives_the_proxies_through_complete_exchanges():
    figures = await hotpath.measure(requests=50, batches=3)
    assert set(figures) == {"activator", "activator via gateway", "queue"}
    assert all(0 < low <= mid for low, mid in figures.values())


def test_hop_table_shows_medians_per_tree_and_process():
    rows = [
        {"tree": tree, "path": "activator", "conc": 16, "rps": rps, "p50_ms": 1.0,
         "cpu_us": {"activator": cpu, "queue": 30.0}}
        for tree, rps, cpu in (("base", 900.0, 40.0), ("base", 1000.0, 44.0), ("base", 1100.0, 42.0),
                               ("new", 2000.0, 30.0))
    ]
    table = hop.table(rows)
    assert "| activator | 16 | base | 1,000 | 1.000 | activator 42, queue 30 |" in table
    assert "| activator | 16 | new | 2,000 | 1.000 | activator 30, queue 30 |" in table
