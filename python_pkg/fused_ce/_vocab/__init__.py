"""Cross-entropy rows split by classes: per-part statistics and their merge, the (row chunk x vocabulary tile)
passes of the linear cross-entropy, and the vocabulary-parallel reductions over torch.distributed. Built on
fused_ce._core."""
