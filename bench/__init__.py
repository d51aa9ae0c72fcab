"""Post-deploy benchmark, capacity planner and the shared hardware/price catalog.

Kept import-light: the stacks import `bench.catalog`, which must not pull in HTTP clients or plotting.
"""
