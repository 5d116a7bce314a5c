"""Training a compact model: fine-tuning (SGD + cosine, distillation, EMA, DARTS' evaluation
regularisers), evaluation, BatchNorm recalibration, losses and mixed precision."""
