"""Training without the network: cold start, `train local`, multi-epoch updates, distillation."""
