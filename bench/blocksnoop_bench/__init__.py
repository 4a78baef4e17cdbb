# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""The benchmarks behind bench/run.py, kept apart from the runner's argument handling."""
