"""Attacks: minimal-norm input-margin engine (upper bounds on d_in) and fixed-budget attacks."""
