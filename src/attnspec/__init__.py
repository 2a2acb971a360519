"""attnspec: exact, certified meaning for attention computations.

Subpackages follow the product's layers:

- ``attnspec.spec``        problem definitions and input validation;
- ``attnspec.reference``   certified enclosures of the true outputs (Arb balls, exact rationals);
- ``attnspec.accelerated`` fast implementations over the array API (numpy, CuPy);
- ``attnspec.conformance`` verdict engine, backends, reports, CLI, pytest plugin;
- ``attnspec.reductions``  executable hardness reductions.
"""

__version__ = "0.1.0"
