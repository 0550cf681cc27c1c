"""The report stage: paired statistics (pure), the report built from runs, plots and
importance."""
