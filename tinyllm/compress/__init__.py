"""Model compression: knowledge distillation, magnitude pruning, int8 weight quantization.

    from tinyllm import compress
    loss = compress.distillation_loss(student(idx), teacher_logits, targets, temperature=2.0,
                                      alpha=0.5)
    compress.prune(model, 0.5, scope="global")            # or structured="heads" / "rows"
    compress.sparsity_report(model)
    compress.quantize_int8(model, group_size=64)          # inference: Linear -> QuantizedLinear
    compress.save_quantized(model, "model-int8.safetensors")

Files: distill.py (the DistillationLoss op), masked.py (the MaskedLinear op and PrunedLinear),
prune.py (which weights to prune, masks, reports), structured.py (heads and hidden units),
quantize.py (the Int8Linear op, QuantizedLinear, save/load); the Numba kernel of the int8
matmul is tinyllm/kernels/int8.py. Derivations: docs/compression.md.
"""
from tinyllm.compress.distill import DistillationLoss, distillation_loss
from tinyllm.compress.masked import MaskedLinear, PrunedLinear, effective_weight
from tinyllm.compress.prune import (format_sparsity_report, prune, remove_pruning,
                                    restore_pruning, sparsity_report)
from tinyllm.compress.quantize import (Int8Linear, QuantizedLinear, dequantize, load_quantized,
                                       quantize_int8, quantize_weight, quantized_size_bytes,
                                       save_quantized)

__all__ = ["distillation_loss", "DistillationLoss", "prune", "remove_pruning", "restore_pruning",
           "sparsity_report", "format_sparsity_report", "PrunedLinear", "MaskedLinear",
           "effective_weight", "quantize_int8", "QuantizedLinear", "Int8Linear",
           "quantize_weight", "dequantize", "quantized_size_bytes", "save_quantized",
           "load_quantized"]
