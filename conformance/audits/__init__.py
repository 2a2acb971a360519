"""Audits of approximation algorithms' claimed error bounds."""
