"""The language-model options of cross-entropy (logit_scale, softcap, the z-loss, returned lse and z-loss,
in-place backward): their ops' fake kernels and autograd, the composite path, and the fp32 sum of row losses
the transformers integration returns. Built on fused_ce._core only."""
