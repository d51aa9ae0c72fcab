"""Tests of the bench package: load tester, planner, recommend, catalog."""
