"""A statistical n-gram language model with interpolated Kneser-Ney smoothing.

The documents' first language model: p(x_1..x_T) = prod_t p(x_t | x_<t), with the history cut
to the last n - 1 tokens and the probabilities read from counts. Raw relative frequencies give
zero to every n-gram the training text lacks, so they are smoothed. Kneser-Ney (Kneser & Ney
1995; the interpolated form of Chen & Goodman 1998, section 3.6) subtracts a discount D from
every seen count and gives the freed mass to the next lower order:

    p_k(w | h) = max(c_k(h w) - D_k, 0) / c_k(h .)  +  D_k * t_k(h) / c_k(h .) * p_{k-1}(w | h')

with h the last k - 1 tokens, h' the last k - 2, c_k(h .) = sum_w c_k(h w) and t_k(h) the number
of distinct w with c_k(h w) > 0 (the lower order's weight is exactly the mass the discounts
freed, so the probabilities sum to 1). A history never seen (c_k(h .) = 0) passes straight to
p_{k-1}.

What c_k counts is Kneser-Ney's idea: the top order (k = n) uses the raw counts, every lower
order the *continuation* counts c_k(h w) = N1+(. h w), the number of distinct tokens seen just
before "h w". A lower order is only consulted when the longer history was rare, so it should
say how likely w is as a novel continuation: "Francisco" is frequent but follows almost only
"San", so its continuation count is small. The unigram level interpolates with the uniform
distribution over the vocabulary, so every token gets a non-zero probability.

Discounts: D_k = n1 / (n1 + 2 n2) (Ney et al. 1994), with n1, n2 the numbers of k-grams counted
exactly once and twice at that order.

Storage: a k-gram (w_1..w_k) is the integer sum_j w_j V^(k-j), so each order's counts are two
sorted NumPy arrays (keys, counts) built by ``np.unique``, and lookups are ``np.searchsorted``;
probabilities for many positions are computed at once, one order at a time.
"""
import numpy as np


class KneserNeyLM:
    """Interpolated Kneser-Ney n-gram model over token ids 0..vocab_size-1.

    ``KneserNeyLM(order=5, vocab_size=65).fit(train_ids)``, then:
    ``loss(x, y)``: mean cross-entropy (nats) of targets y (M, T) after contexts x (M, T), the
    same windows a neural LM gets (y[:, j] predicted from x[:, :j + 1], its last order - 1
    tokens); ``probs(context)``: the next-token distribution (V,) after a context;
    ``generate(context, n, rng)``: sample n tokens.
    """

    def __init__(self, order=5, vocab_size=None, discount=None):
        if order < 1:
            raise ValueError(f"KneserNeyLM: order must be >= 1, got {order}")
        if discount is not None and not 0.0 < discount < 1.0:
            raise ValueError(f"KneserNeyLM: discount must be in (0, 1), got {discount}")
        self.order, self.vocab_size, self.discount = order, vocab_size, discount
        self.tables = None

    # ---- counting

    def fit(self, ids):
        """Count every k-gram (k = 1..order) of the 1-D id array ``ids``; returns self."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"KneserNeyLM.fit: expected a 1-D integer id array, got "
                             f"{ids.dtype} {ids.shape}")
        if len(ids) < self.order:
            raise ValueError(f"KneserNeyLM.fit: {len(ids)} tokens cannot hold a "
                             f"{self.order}-gram")
        V = self.vocab_size if self.vocab_size is not None else int(ids.max()) + 1
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"KneserNeyLM.fit: ids must lie in [0, {V}), got "
                             f"[{ids.min()}, {ids.max()}]")
        if float(V) ** self.order >= 2.0 ** 62:
            raise ValueError(f"KneserNeyLM: vocab_size {V} ** order {self.order} does not fit "
                             f"the int64 n-gram keys; use a lower order")
        self.vocab_size = V
        ids = ids.astype(np.int64)
        raw = {}                                                  # k -> (keys, counts)
        for k in range(1, self.order + 1):
            keys = _keys(ids, k, V)                               # every k-gram of the text
            raw[k] = np.unique(keys, return_counts=True)
        self.tables = {}
        for k in range(1, self.order + 1):
            if k == self.order:
                keys, counts = raw[k]                             # top order: raw counts
            else:
                # continuation counts: distinct tokens seen before each k-gram, i.e. how many
                # distinct (k+1)-grams end with it
                keys, counts = np.unique(raw[k + 1][0] % V ** k, return_counts=True)
            self.tables[k] = _Table(keys, counts, V, self.discount)
        return self

    # ---- probabilities

    def _check_fitted(self, op):
        if self.tables is None:
            raise RuntimeError(f"KneserNeyLM.{op}: call fit(ids) first")

    def _target_probs(self, seq, n_ctx):
        """p(seq[:, -1] | up to the last n_ctx[m] tokens before it), for rows seq (M, L).

        Computed bottom-up: the unigram level, then each order k that has its k - 1 tokens of
        history, interpolating with the order below."""
        V = self.vocab_size
        w = seq[:, -1]
        t1 = self.tables[1]
        p = t1.unigram(w)                            # (M,) unigram level
        for k in range(2, self.order + 1):
            ok = n_ctx >= k - 1                                   # rows with that much history
            if not ok.any():
                break
            gram = _row_keys(seq[ok, -k:], V)                     # (h w) keys
            p[ok] = self.tables[k].interpolate(gram, gram // V, p[ok])
        return p

    def loss(self, x, y):
        """Mean cross-entropy (nats) of y (M, T) given x (M, T): y[:, j] after x[:, :j + 1]."""
        self._check_fitted("loss")
        x, y = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
        if x.shape != y.shape or x.ndim != 2:
            raise ValueError(f"KneserNeyLM.loss: expected x and y of one shape (M, T), got "
                             f"{x.shape} and {y.shape}")
        M, T = x.shape
        if ((x < 0) | (x >= self.vocab_size) | (y < 0) | (y >= self.vocab_size)).any():
            raise ValueError(f"KneserNeyLM.loss: ids must lie in [0, {self.vocab_size})")
        seq = np.concatenate([x[:, :1], y], axis=1)             # (M, T + 1): x = seq[:, :-1]
        n = self.order
        # row (m, j) of the work: the target seq[m, j + 1] and up to n - 1 tokens before it
        pad = np.concatenate([np.zeros((M, n - 1), np.int64), seq], axis=1)
        cols = np.arange(T)[:, None] + np.arange(n)[None, :] + 1  # (T, n) window columns
        rows = pad[:, cols].reshape(M * T, n)                     # (M*T, n): history + target
        n_ctx = np.tile(np.arange(1, T + 1), M)                   # history length j + 1
        p = self._target_probs(rows, n_ctx)
        return float(-np.log(p).mean())

    def probs(self, context):
        """The next-token distribution (V,) after ``context`` (a sequence of ids; its last
        order - 1 tokens are used)."""
        self._check_fitted("probs")
        V, n = self.vocab_size, self.order
        ctx = np.asarray(context, dtype=np.int64).reshape(-1)
        ctx = ctx[max(0, len(ctx) - (n - 1)):] if n > 1 else ctx[:0]    # the last n - 1 ids
        rows = np.concatenate([np.broadcast_to(ctx, (V, len(ctx))),
                               np.arange(V)[:, None]], axis=1)    # (V, len(ctx) + 1)
        return self._target_probs(rows, np.full(V, len(ctx)))

    def generate(self, context, max_new_tokens, rng, temperature=1.0):
        """Sample ``max_new_tokens`` ids after ``context``; returns context + the new ids."""
        out = [int(i) for i in context]
        for _ in range(max_new_tokens):
            p = self.probs(out)
            if temperature != 1.0:
                p = p ** (1.0 / temperature)
                p = p / p.sum()
            out.append(int(rng.choice(self.vocab_size, p=p)))
        return out


class _Table:
    """One order's counts c(h w) (sorted keys) and, per history h, c(h .) and t(h)."""

    def __init__(self, keys, counts, V, discount):
        self.keys, self.counts, self.V = keys, counts.astype(np.float64), V
        # keys are sorted, and key // V (the history) is then sorted too
        self.hist, first = np.unique(keys // V, return_index=True)
        self.hist_total = np.add.reduceat(self.counts, first)     # c(h .)
        self.hist_types = np.diff(np.append(first, len(keys))).astype(np.float64)   # t(h)
        self.total = self.counts.sum()
        if discount is None:
            n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
            discount = n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.75
        self.D = float(discount)

    def count(self, keys):
        i = np.searchsorted(self.keys, keys)
        i = np.minimum(i, len(self.keys) - 1)
        return np.where(self.keys[i] == keys, self.counts[i], 0.0)

    def interpolate(self, grams, hists, p_lower):
        """p_k(w | h) for (h w) keys ``grams`` with histories ``hists``, given p_{k-1}."""
        j = np.minimum(np.searchsorted(self.hist, hists), len(self.hist) - 1)
        seen = self.hist[j] == hists
        total = np.where(seen, self.hist_total[j], 1.0)
        types = np.where(seen, self.hist_types[j], 0.0)
        c = self.count(grams)
        p = (np.maximum(c - self.D, 0.0) + self.D * types * p_lower) / total
        return np.where(seen, p, p_lower)                         # unseen history: back off

    def unigram(self, w):
        """The unigram level: discounted counts interpolated with the uniform 1 / V."""
        n_types = float(len(self.keys))
        return (np.maximum(self.count(w) - self.D, 0.0) + self.D * n_types / self.V) / self.total


def _keys(ids, k, V):
    """The integer key of every k-gram of the 1-D array ``ids``: (len - k + 1,)."""
    n = len(ids) - k + 1
    key = np.zeros(n, np.int64)
    for j in range(k):
        key = key * V + ids[j:j + n]
    return key


def _row_keys(rows, V):
    """The key of each row of (M, k) ids."""
    key = np.zeros(rows.shape[0], np.int64)
    for j in range(rows.shape[1]):
        key = key * V + rows[:, j]
    return key
