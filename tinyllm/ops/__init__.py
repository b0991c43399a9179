"""Differentiable ops, one family per module; each op is a named ``Function`` subclass.

elementwise  Add Sub Mul Div Pow Neg Exp Log Sqrt Tanh Sigmoid ReLU GELU Where Cast ToDevice
reduce       Sum Mean Max Var
movement     Reshape Permute GetItem Concatenate Stack (split is slices)
matmul       MatMul Linear
attention    ScaledDotProductAttention QKVSelfAttention
softmax      Softmax LogSoftmax
loss         CrossEntropy BinaryCrossEntropyWithLogits MSELoss GaussianKL
norm         LayerNorm
embedding    Embedding
dropout      Dropout
rnn          LSTMCell LSTM
"""
