"""The fused linear cross-entropy (input @ weight.T, then cross-entropy, never the N x V logits): its custom
ops, chunk loop and autograd, and the base class of LinearCrossEntropyLoss. Built on fused_ce._vocab and
fused_ce._core."""
