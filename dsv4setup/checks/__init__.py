"""Doctor checks: pure functions from a hardware snapshot (and the chosen profile) to results.

`report.build_report` runs them all and adds the recommendation; rules.yaml holds every fact
and threshold they use. Nothing here probes the machine: see dsv4setup.hardware.
"""
