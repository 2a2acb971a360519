"""Judging: certified verdicts, precision-model tolerances and the problem plug-ins."""
