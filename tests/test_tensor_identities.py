"""sympy proofs (at fixed sizes) of the identities behind the fast tensor-attention algorithm."""

import pytest
import sympy as sp

from attnspec.reference.tensor_identities import (
    column_kronecker,
    hadamard,
    prove_feature_identity,
    prove_ones_identity,
    prove_order_independence,
    prove_value_identity,
    symbolic_matrix,
)

SIZES = [(2, 2, 3), (3, 2, 3), (2, 2, 4), (3, 2, 4)]  # (n, r, k): U's are n×r, k − 1 factors


@pytest.mark.parametrize("n, r, k", SIZES)
@pytest.mark.parametrize("order", ["lexicographic", "paper"])
def test_value_identity(n, r, k, order):
    assert prove_value_identity(n, r, 2, k, order)


@pytest.mark.parametrize("n, r, k", SIZES)
def test_ones_identity(n, r, k):
    assert prove_ones_identity(n, r, k)


@pytest.mark.parametrize("d, degree, factors", [(2, 3, 2), (3, 2, 2), (2, 2, 3)])
def test_monomial_features_are_multiplicative(d, degree, factors):
    assert prove_feature_identity(d, degree, factors)


def test_row_order_does_not_matter():
    assert prove_order_independence(2, 2, 2, 3) and prove_order_independence(2, 1, 1, 4)


def test_checker_rejects_wrong_pairings():
    """Negative controls: the prover must say False for the bugs the broken backends model."""
    u2, u3 = symbolic_matrix("U", 2, 2), symbolic_matrix("W", 2, 2)
    v1, v2 = symbolic_matrix("V", 2, 2), symbolic_matrix("Z", 2, 2)
    rhs = hadamard([u2.T * v1, u3.T * v2])
    wrong_pairing = column_kronecker([u2, u3]).T * column_kronecker([v2, v1])
    mixed_orders = column_kronecker([u2, u3], "lexicographic").T * column_kronecker([v1, v2], "paper")
    for lhs in (wrong_pairing, mixed_orders):
        assert any(sp.expand(x) != 0 for x in lhs - rhs)
