"""The private core of fused_ce: loading the compiled ops, their fake kernels, autograd and vmap rules, argument
validation and canonicalization, dtypes, and the torch.func path. Everything above it (the language-model
options, the vocabulary statistics, the linear cross-entropy, the public API) builds on it; it imports
none of them (tests/test_layering.py)."""
