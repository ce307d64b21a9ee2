"""The dependency graph of the enabled units: waves, cycles, critical path, dependents.

Edges point from a unit to what it waits for. ``requires`` edges are ready-gated and propagate failure;
``after`` edges (and the plan's GPU ordering edges) only order starts. ``restart_with`` (a unit is restarted
when one it names has a new instance) is kept beside the edges; each of its names is an ``after`` edge too,
unless it is a ``requires`` one. Names are unit names: virtual names (``provides``) are resolved to their
provider before the graph is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import field

from supervisor.records import dataclass

_NONE: frozenset[str] = frozenset()   # what a unit with no neighbours has (a stack of independent units)


@dataclass(frozen=True)
class Graph:
    nodes: tuple[str, ...]
    requires: Mapping[str, tuple[str, ...]]
    after: Mapping[str, tuple[str, ...]]
    restart_with: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _memo: dict = field(default_factory=dict, compare=False, repr=False)   # derived data, built on demand

    @classmethod
    def build(cls, nodes: Iterable[str], requires: Mapping[str, Iterable[str]],
              after: Mapping[str, Iterable[str]], restart_with: Mapping[str, Iterable[str]] | None = None
              ) -> Graph:
        ns = tuple(sorted(nodes))
        known = set(ns)
        rw = restart_with or {}
        req = {n: tuple(sorted({d for d in requires.get(n, ()) if d in known and d != n})) for n in ns}
        aft = {n: tuple(sorted({d for d in (*after.get(n, ()), *rw.get(n, ())) if d in known and d != n}
                               - set(req[n]))) for n in ns}
        rwith = {n: got for n in ns if (got := tuple(sorted({d for d in rw.get(n, ()) if d in known and d != n})))}
        return cls(ns, req, aft, rwith)

    def deps(self, name: str) -> tuple[str, ...]:
        """Everything ``name`` waits for before it starts."""
        return self.requires[name] + self.after[name]

    def dependents(self, name: str, *, requires_only: bool = True, transitive: bool = True) -> list[str]:
        """Units that wait for ``name`` (by ``requires`` only, by default), nearest first (by name within a
        distance). Linear in the size of the graph: the reverse edges are built once per graph."""
        rev = self._reverse(requires_only)
        out: list[str] = []
        seen = {name}
        frontier = [name]
        while frontier:
            nxt = sorted({m for n in frontier for m in rev.get(n, ()) if m not in seen})
            seen.update(nxt)
            out += nxt
            frontier = nxt if transitive else []
        return out

    def reaches(self, src: str, dst: str) -> bool:
        """True when ``src`` waits, directly or not, for ``dst`` (``src != dst``). Each source's set of
        everything it waits for is computed once per graph, so repeated questions cost O(1)."""
        return dst in self.waits_for(src)

    def waits_for(self, name: str) -> frozenset[str]:
        """Everything ``name`` waits for, directly or not (not itself, unless it is on a cycle)."""
        memo = self._memo.setdefault("closure", {})
        hit = memo.get(name)
        if hit is None:
            seen: set[str] = set()
            stack = [name]
            while stack:
                for d in self.deps(stack.pop()):
                    if d not in seen:
                        seen.add(d)
                        stack.append(d)
            hit = memo[name] = frozenset(seen)
        return hit

    def waiting_for(self, name: str) -> list[str]:
        """Units that wait for ``name`` directly (by ``requires`` or ``after``)."""
        return self._reverse(False).get(name, [])

    def neighbours(self, name: str) -> frozenset[str]:
        """What ``name`` waits for and what waits for it, directly (empty for a unit outside the graph)."""
        memo = self._memo.setdefault("neighbours", {})
        hit = memo.get(name)
        if hit is None:
            hit = memo[name] = frozenset(self.requires.get(name, ()) + self.after.get(name, ())
                                         + tuple(self.waiting_for(name))) or _NONE   # one empty set for all
        return hit

    def _reverse(self, requires_only: bool) -> dict[str, list[str]]:
        key = "rev_requires" if requires_only else "rev_all"
        rev = self._memo.get(key)
        if rev is None:
            rev = {}
            for n in self.nodes:
                for d in (self.requires[n] if requires_only else self.deps(n)):
                    rev.setdefault(d, []).append(n)
            self._memo[key] = rev
        return rev

    def cycles(self) -> list[list[str]]:
        """Each dependency cycle once, as a path that ends where it starts (``a -> b -> a``)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[str] = []
        sccs: list[list[str]] = []
        counter = 0
        for root in self.nodes:
            if root in index:
                continue
            # iterative Tarjan
            work = [(root, iter(self.deps(root)))]
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack.add(root)
            while work:
                node, it = work[-1]
                advanced = False
                for d in it:
                    if d not in index:
                        index[d] = low[d] = counter
                        counter += 1
                        stack.append(d)
                        on_stack.add(d)
                        work.append((d, iter(self.deps(d))))
                        advanced = True
                        break
                    if d in on_stack:
                        low[node] = min(low[node], index[d])
                if advanced:
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on_stack.discard(x)
                        comp.append(x)
                        if x == node:
                            break
                    if len(comp) > 1 or comp[0] in self.deps(comp[0]):
                        sccs.append(comp)
        return [self._cycle_in(set(c)) for c in sccs]

    def _cycle_in(self, comp: set[str]) -> list[str]:
        """One concrete cycle through a strongly connected component, starting at its smallest name."""
        start = min(comp)
        if len(comp) == 1:
            return [start, start]
        # BFS for the shortest path from start back to start inside comp
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier:
            nxt = []
            for n in frontier:
                for d in self.deps(n):
                    if d not in comp:
                        continue
                    if d == start:
                        path = [n]
                        while path[-1] != start:
                            path.append(prev[path[-1]])
                        path.reverse()
                        return path + [start]
                    if d not in prev:
                        prev[d] = n
                        nxt.append(d)
            frontier = nxt
        return [start, start]  # unreachable: every node of a strongly connected component is on a cycle

    def order(self) -> list[str]:
        """A topological order (dependencies first); ties by name. Requires an acyclic graph."""
        indeg = {n: len(self.deps(n)) for n in self.nodes}
        rdeps: dict[str, list[str]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for d in self.deps(n):
                rdeps[d].append(n)
        import heapq

        ready = [n for n, k in indeg.items() if k == 0]
        heapq.heapify(ready)
        out = []
        while ready:
            n = heapq.heappop(ready)
            out.append(n)
            for m in rdeps[n]:
                indeg[m] -= 1
                if indeg[m] == 0:
                    heapq.heappush(ready, m)
        if len(out) != len(self.nodes):
            raise ValueError("the dependency graph has a cycle")
        return out

    def waves(self) -> list[list[str]]:
        """Groups that may start together: wave k holds units whose longest dependency chain has k links."""
        level: dict[str, int] = {}
        for n in self.order():
            level[n] = 1 + max((level[d] for d in self.deps(n)), default=-1)
        waves: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for n, k in level.items():
            waves[k].append(n)
        return [sorted(w) for w in waves]

    def critical_path(self, durations: Mapping[str, float]) -> tuple[float, list[str]]:
        """The longest chain of expected start-up times (a unit's time counts from its start to ready)."""
        finish: dict[str, float] = {}
        via: dict[str, str | None] = {}
        for n in self.order():
            best, best_dep = 0.0, None
            for d in self.deps(n):
                if finish[d] > best or best_dep is None and finish[d] >= best:
                    best, best_dep = finish[d], d
            finish[n] = best + float(durations.get(n, 0.0))
            via[n] = best_dep
        if not finish:
            return 0.0, []
        end = max(finish, key=lambda n: (finish[n], n))
        path = [end]
        while via[path[-1]] is not None:
            path.append(via[path[-1]])  # type: ignore[arg-type]
        path.reverse()
        return finish[end], path
