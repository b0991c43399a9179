"""Differentiable ops, one family per module; each op is a named ``Function`` subclass.

elementwise  Add Sub Mul Div Pow Neg Exp Log Sqrt Tanh Sigmoid ReLU GELU Where Cast ToDevice
reduce       Sum Mean Max Min Prod Var Std LogSumExp (argmax argmin all any: no grad)
scan         CumSum CumProd (sort, topk: argsort + Gather)
indexing     Gather IndexSelect ScatterAdd MaskedSelect (one_hot: no grad)
movement     Reshape Permute GetItem Concatenate Stack (split is slices)
shape        Expand Tile RepeatInterleave Flip Roll Pad (squeeze, unsqueeze, flatten,
             unflatten are Reshape; chunk is slices)
linalg       Einsum Outer Triu Tril Diagonal
conv         Conv1d
matmul       MatMul Linear
attention    ScaledDotProductAttention QKVSelfAttention
softmax      Softmax LogSoftmax
loss         CrossEntropy BinaryCrossEntropyWithLogits MSELoss GaussianKL
losses       NLLLoss SoftTargetCrossEntropy BinaryCrossEntropy KLDiv
regression   SmoothL1Loss HuberLoss CosineSimilarity
norm         LayerNorm RMSNorm
rope         RoPE (rotary position embedding; rope_cos_sin builds its tables)
embedding    Embedding
dropout      Dropout
rnn          LSTMCell LSTM
activation   SiLU Softplus LeakyReLU ELU Mish LogSigmoid Hardtanh Softsign
unary        Abs Sign Rsqrt Sin Cos Erf Exp2 Log2 Log1p Expm1 Square Reciprocal Floor Ceil Round
             Trunc (isnan, isinf, isfinite, logical_* give boolean tensors, no Function)
minmax       Clip Maximum Minimum
"""
