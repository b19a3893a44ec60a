"""Generation on a tensor-parallel model: SPMD input checks and seeds (the fast decode path slots in here)."""
