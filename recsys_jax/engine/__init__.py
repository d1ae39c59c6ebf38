"""The training engine: `TrainConfig`, the step, the epoch as one compiled loop, the
row-sparse optimizers and fused CPU kernels, the on-device shuffles, the store of compiled
programs, meshes of devices, and alternating least squares."""
