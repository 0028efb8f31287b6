"""bench/ratios.py: medians, the derived metrics (CPU s/Gbit, UDP carried) and the ratio table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ratios", ROOT / "bench" / "ratios.py")
assert _spec is not None and _spec.loader is not None
ratios = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ratios)

TSV = """\
1\twggo\ttcp1_gbps\t0.40
1\twggo\tdaemon_cpu_pct\t160
1\twggo\tudp64_kpps\t30
1\twggo\tudp64_appdrop_kpps\t2
1\twggo\tforeign_pct\t0
2\twggo\ttcp1_gbps\t0.50
2\twggo\tdaemon_cpu_pct\t150
2\twggo\tudp64_kpps\t34
2\twggo\tudp64_appdrop_kpps\t4
2\twggo\tforeign_pct\t0
1\ttunnelpyd\ttcp1_gbps\t0.80
1\ttunnelpyd\tdaemon_cpu_pct\t160
1\ttunnelpyd\tudp64_kpps\t40
1\ttunnelpyd\tudp64_appdrop_kpps\t20
1\ttunnelpyd\tforeign_pct\t0
2\ttunnelpyd\ttcp1_gbps\t0.10
2\ttunnelpyd\tudp64_kpps\t5
2\ttunnelpyd\tforeign_pct\t55
1\tfastd\ttcp1_gbps\t0.45
1\tfastd\tudp64_kpps\tNA
"""


def test_medians_derived_metrics_and_disturbed_runs(tmp_path):
    f = tmp_path / "r.tsv"
    f.write_text(TSV)
    runs, order = ratios.load([str(f)])
    assert order == ["wggo", "tunnelpyd", "fastd"]
    med = ratios.medians(runs)
    assert med["wggo", "tcp1_gbps"] == 0.45
    assert med["wggo", "udp64_carried_kpps"] == (32 + 38) / 2
    assert abs(med["wggo", "cpu_s_per_gbit"] - (1.6 / 0.4 + 1.5 / 0.5) / 2) < 1e-9
    # The run with 55 % foreign load is left out: a clean one exists.
    assert med["tunnelpyd", "tcp1_gbps"] == 0.80
    assert med["tunnelpyd", "udp64_carried_kpps"] == 60
    assert ("fastd", "udp64_kpps") not in med  # NA is absent, not zero
    assert ratios.best_anchor(med, order, "tcp1_gbps") == "wggo"
    assert ratios.best_anchor(med, order, "udp64_carried_kpps") == "wggo"
    table = ratios.table(runs, order)
    row = next(line for line in table.splitlines() if line.startswith("tunnelpyd"))
    # TCP x1 0.80 / 0.45, UDP 40 / 32, carried 60 / 35
    assert "1.78" in row and "1.25" in row and "1.71" in row
