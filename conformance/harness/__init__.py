"""The harness: backends, isolation, the runner, reports and case files."""
