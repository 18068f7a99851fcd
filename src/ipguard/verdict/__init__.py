"""The verdict: the matching rate, the one null model and decision rule, sequential testing."""
