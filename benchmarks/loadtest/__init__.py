"""The load-test suite behind `exaone-serve bench` (locust users, per-request timelines, reports)."""
