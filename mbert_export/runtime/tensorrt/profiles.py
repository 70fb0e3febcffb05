"""Optimization-profile arithmetic for TensorRT engines, as pure functions (testable without a GPU).

An engine has one or more optimization profiles; each gives every input a (min, opt, max) shape. A
call must use a profile whose range holds its shapes. A batch too large for every profile that holds
its sequence length is split along the batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple[int, ...]

#: Sequence dimensions of device buffers are rounded up to a multiple of this (buffer reuse).
SEQ_BUCKET = 64


class EngineShapeError(ValueError):
    """A call whose shapes no optimization profile of the engine accepts."""


@dataclass(frozen=True)
class Profile:
    """One optimization profile: input name -> (min, opt, max) shapes."""

    index: int
    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def fits(self, shapes: dict[str, Shape]) -> bool:
        for name, shape in shapes.items():
            if name not in self.shapes:
                continue
            low, _, high = self.shapes[name]
            if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
                return False
        return True

    def fits_except_batch(self, shapes: dict[str, Shape]) -> bool:
        """Every dimension but the first (batch) is in range, and batch 1.. fits from some minimum."""
        for name, shape in shapes.items():
            if name not in self.shapes:
                continue
            low, _, high = self.shapes[name]
            if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape[1:], low[1:], high[1:])):
                return False
        return True

    def batch_range(self) -> tuple[int, int]:
        lows = [s[0][0] for s in self.shapes.values()]
        highs = [s[2][0] for s in self.shapes.values()]
        return max(lows), min(highs)

    def max_shape(self, name: str) -> Shape:
        return self.shapes[name][2]

    def distance(self, shapes: dict[str, Shape]) -> int:
        """How far the shapes are from this profile's `opt` shapes (TensorRT tunes tactics at opt)."""
        total = 0
        for name, shape in shapes.items():
            if name in self.shapes:
                total += sum(abs(d - o) for d, o in zip(shape, self.shapes[name][1]))
        return total


def limits(profiles: list[Profile], name: str) -> tuple[int, int]:
    """(largest batch, largest last dimension) over all profiles for input `name`."""
    batch = max(p.shapes[name][2][0] for p in profiles)
    seq = max(p.shapes[name][2][-1] for p in profiles)
    return batch, seq


def select_profile(profiles: list[Profile], shapes: dict[str, Shape]) -> int | None:
    """Index of the profile that holds `shapes` and whose opt is closest; None when none holds them."""
    fitting = [p for p in profiles if p.fits(shapes)]
    if not fitting:
        return None
    return min(fitting, key=lambda p: (p.distance(shapes), p.index)).index


def describe_profiles(profiles: list[Profile], name: str) -> str:
    return "; ".join(f"#{p.index}: {list(p.shapes[name][0])}..{list(p.shapes[name][2])}" for p in profiles
                     if name in p.shapes)


def plan_chunks(profiles: list[Profile], shapes: dict[str, Shape]) -> list[tuple[int, int, int]]:
    """Split a call along the batch axis into (profile index, start, stop) pieces that profiles accept.

    The whole batch goes to one profile when one holds it. Otherwise it is cut into the largest pieces
    a profile accepts (the profile with the largest max batch among those that hold the other
    dimensions), and the remainder gets its own best profile.
    """
    if not profiles:
        raise EngineShapeError("the engine has no optimization profiles")
    batch = next(iter(shapes.values()))[0]
    if batch < 1:
        raise EngineShapeError("cannot run an empty batch")
    candidates = [p for p in profiles if p.fits_except_batch(shapes)]
    if not candidates:
        name = next(iter(shapes))
        raise EngineShapeError(
            f"input shape {list(shapes[name])} is outside every optimization profile of the engine "
            f"({describe_profiles(profiles, name)}); shorten the input or rebuild the engine with a "
            "profile that covers it")
    chunks: list[tuple[int, int, int]] = []
    start = 0
    while start < batch:
        rest = batch - start
        rest_shapes = {n: (rest,) + s[1:] for n, s in shapes.items()}
        index = select_profile(candidates, rest_shapes)
        if index is not None:
            chunks.append((index, start, batch))
            break
        # The biggest piece some profile accepts.
        usable = [p for p in candidates if p.batch_range()[0] <= min(rest, p.batch_range()[1])]
        if not usable:
            raise EngineShapeError(
                f"a batch of {rest} fits no optimization profile (batch ranges: "
                f"{', '.join(f'{p.batch_range()[0]}..{p.batch_range()[1]}' for p in candidates)})")
        best = max(usable, key=lambda p: (min(p.batch_range()[1], rest), -p.index))
        size = min(best.batch_range()[1], rest)
        chunks.append((best.index, start, start + size))
        start += size
    return chunks


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def bucket_shape(shape: Shape, max_shape: Shape, seq_bucket: int = SEQ_BUCKET) -> Shape:
    """The shape device buffers are allocated for: leading dims to a power of two, the last to a
    multiple of `seq_bucket`, each clamped to the profile maximum. Calls in one bucket reuse buffers."""
    out = []
    for axis, (dim, high) in enumerate(zip(shape, max_shape)):
        if axis == len(shape) - 1:
            rounded = -(-dim // seq_bucket) * seq_bucket
        else:
            rounded = _next_pow2(dim)
        out.append(max(dim, min(rounded, high)))
    return tuple(out)
