"""Where each node of the explorer's graph goes: layers top to bottom in data-flow order.

    xy = layout(nodes, edges)           # {forward index: (x, y)}

A layered drawing (Sugiyama's, cut down to what a training step's graph needs):
- layer: an op sits one layer below the lowest of its inputs (the longest path from the
  leaves); a leaf (a parameter, an input) sits just above the first op that reads it, not at
  the top, so a block's weights appear beside the block;
- order within a layer: by module (a block's nodes stay together), then a few sweeps that
  move each node toward the mean position of its neighbours in the layer above (downward
  sweeps) and below (upward sweeps), the barycentre heuristic against crossings;
- coordinates: a fixed pitch, each layer centred.
"""

DX, DY = 170, 64            # pixels between neighbouring nodes of a layer, and between layers


def layout(nodes, edges, sweeps=4):
    """{forward index: (x, y)} for ``nodes`` (dicts with "forward", "op", "module") and
    ``edges`` ([input's forward index, consumer's forward index])."""
    n = len(nodes)
    parents = {i: [] for i in range(n)}
    children = {i: [] for i in range(n)}
    for a, b in edges:
        parents[b].append(a)
        children[a].append(b)
    by_forward = {node["forward"]: node for node in nodes}
    layer = {}
    for i in range(n):                              # forward order: inputs first
        layer[i] = 1 + max((layer[p] for p in parents[i]), default=-1)
    for i in range(n):                              # leaves down to just above their reader
        if not parents[i] and children[i]:
            layer[i] = min(layer[c] for c in children[i]) - 1
    rows = {}
    for i in range(n):
        rows.setdefault(layer[i], []).append(i)
    for row in rows.values():                       # modules together, then forward order
        row.sort(key=lambda i: (by_forward[i]["module"], i))
    pos = _positions(rows)
    levels = sorted(rows)
    for _ in range(sweeps):
        for lv in levels[1:]:
            _reorder(rows[lv], parents, pos, by_forward)
            pos.update(_positions({lv: rows[lv]}))
        for lv in reversed(levels[:-1]):
            _reorder(rows[lv], children, pos, by_forward)
            pos.update(_positions({lv: rows[lv]}))
    width = max(len(r) for r in rows.values())
    xy = {}
    for lv, row in rows.items():
        left = (width - len(row)) / 2
        for k, i in enumerate(row):
            xy[i] = (round((left + k) * DX + DX / 2), (lv - levels[0]) * DY + DY / 2)
    return xy


def _positions(rows):
    return {i: k for row in rows.values() for k, i in enumerate(row)}


def _reorder(row, neighbours, pos, by_forward):
    """Sort ``row`` by the mean position of each node's neighbours (its own where it has
    none in the adjacent layer), module, then forward order."""
    def key(i):
        near = [pos[j] for j in neighbours[i] if j in pos]
        centre = sum(near) / len(near) if near else pos[i]
        return (centre, by_forward[i]["module"], i)
    row.sort(key=key)
