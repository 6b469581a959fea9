"""Benchmarks behind `geoloc bench` (each module one benchmark; figures printed and saved, never asserted)."""
