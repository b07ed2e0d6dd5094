"""Data-plane benchmarks: direct, Envoy hop, queue, gateway paths, under bounded wrk loads."""
