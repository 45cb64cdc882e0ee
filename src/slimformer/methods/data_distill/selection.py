"""Which teacher-labeled examples to train on: the most informative fraction by the teacher's
entropy, by its confidence margin (top-1 minus top-2 probability; small = informative), or by
disagreement between teachers; optionally the same fraction within every predicted class and/or
every length bin, so that the kept rows keep the pool's class and length mix."""

import numpy as np

from slimformer.errors import RecipeError

CRITERIA = ("entropy", "margin", "disagreement", "random")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(-1)


def margin(probs: np.ndarray) -> np.ndarray:
    top2 = np.sort(probs, -1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def disagreement(probs_per_teacher: list[np.ndarray]) -> np.ndarray:
    """Jensen-Shannon divergence of the teachers' distributions (0 = they agree)."""
    mean = np.mean(probs_per_teacher, axis=0)
    return entropy(mean) - np.mean([entropy(p) for p in probs_per_teacher], axis=0)


def informativeness(
    criterion: str, probs_per_teacher: list[np.ndarray], seed: int = 0
) -> np.ndarray:
    """Higher = more informative, for every criterion."""
    probs = np.mean(probs_per_teacher, axis=0)
    if criterion == "entropy":
        return entropy(probs)
    if criterion == "margin":
        return -margin(probs)
    if criterion == "disagreement":
        if len(probs_per_teacher) < 2:
            raise RecipeError("selection by disagreement needs at least two teachers.")
        return disagreement(probs_per_teacher)
    if criterion == "random":
        return np.random.default_rng(seed).random(len(probs))
    raise RecipeError(f"Unknown selection criterion {criterion!r}; known: {', '.join(CRITERIA)}.")


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise RecipeError(
            f"Selection fraction {fraction} must be in (0, 1]: the share of teacher-labeled "
            f"examples to keep (0.3 keeps 30%)."
        )


SAMPLING = ("top", "proportional", "stratified")


def stratified_pick(scores: np.ndarray, k: int, bins: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``k`` rows spread over ``bins`` equal-width score bins, random within each:
    coverage-centric coreset selection (Zheng et al., ICLR 2023). The budget is shared out from
    the smallest bin up, so every difficulty level is covered and the sparse informative bins
    are kept far more densely than a random draw would keep them."""
    if k >= len(scores):
        return np.arange(len(scores))
    lo, hi = float(scores.min()), float(scores.max())
    if hi <= lo:
        return rng.choice(len(scores), size=k, replace=False)
    ids = np.minimum(((scores - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    members = [np.flatnonzero(ids == b) for b in range(bins)]
    members = sorted((m for m in members if len(m)), key=len)
    picked, budget = [], k
    for left, m in zip(range(len(members), 0, -1), members, strict=True):
        take = min(len(m), budget // left)
        picked.append(rng.choice(m, size=take, replace=False))
        budget -= take
    return np.concatenate(picked)


def sampling_keys(scores: np.ndarray, sampling: str = "top", seed: int = 0) -> np.ndarray:
    """Keys whose largest ``k`` are the rows kept. ``top`` (and ``stratified``, which ranks by
    the scores to skip the top and then picks by ``stratified_pick``): the scores themselves
    (the ``k`` most informative rows). ``proportional``: a weighted draw without replacement,
    row ``i``'s chance proportional to its score shifted to start at 0 (Efraimidis-Spirakis keys
    ``u ** (1 / w)``): informative rows still dominate, but easier ones are not all left out."""
    if sampling in ("top", "stratified"):
        return scores
    if sampling != "proportional":
        raise RecipeError(f"Unknown selection sampling {sampling!r}; known: {', '.join(SAMPLING)}.")
    weights = scores - scores.min()
    weights = weights / weights.max() if weights.max() > 0 else np.ones_like(weights)
    u = np.random.default_rng(seed).random(len(scores))
    with np.errstate(divide="ignore"):
        # log(u) / w orders like u ** (1 / w); a zero weight is never drawn before a positive one
        return np.where(weights > 0, np.log(u) / np.maximum(weights, 1e-300), -np.inf)


def length_bins(lengths: np.ndarray, bins: int) -> np.ndarray:
    """Bin id per row: ``bins`` quantile bins of the token length (fewer when lengths repeat).
    Entropy alone favours short ambiguous fragments; ranking within length bins keeps the
    pool's length mix and picks the least certain rows of every length."""
    lengths = np.asarray(lengths)
    if bins <= 1 or len(lengths) == 0:
        return np.zeros(len(lengths), dtype=np.int64)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, lengths, side="right")


def select(
    scores: np.ndarray,
    fraction: float,
    predicted: np.ndarray | None = None,
    class_balanced: bool = False,
    sampling: str = "top",
    seed: int = 0,
    strata: np.ndarray | None = None,
    last: np.ndarray | None = None,
    skip_top: float = 0.0,
    score_bins: int = 50,
) -> np.ndarray:
    """Indices (sorted) of the ``fraction`` kept by score (see ``sampling_keys``); the same
    fraction within every predicted class when balanced, and within every ``strata`` group
    (e.g. ``length_bins``) when given. Rows flagged in ``last`` (a bool mask) are kept only
    when a group has too few other rows; the fraction stays that of all rows. ``skip_top``:
    the share of every group's highest-ranked rows passed over before the fraction is taken
    (the most ambiguous rows, often label noise or fragments with no clear answer).
    ``stratified`` sampling takes each group's fraction over ``score_bins`` score bins of the
    rows left after the skip (``stratified_pick``)."""
    check_fraction(fraction)
    keys = sampling_keys(scores, sampling, seed)
    if last is not None:
        keys = np.where(np.asarray(last, dtype=bool), -np.inf, keys)
    n = len(scores)
    groups = np.zeros(n, dtype=np.int64)
    if class_balanced:
        if predicted is None:
            raise RecipeError("class_balanced selection needs the teacher's predicted classes.")
        groups = np.unique(predicted, return_inverse=True)[1].reshape(-1)
    if strata is not None:
        groups = groups * (int(np.max(strata)) + 1) + np.asarray(strata)
    keep = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        k = max(1, round(len(members) * fraction))
        skip = min(round(len(members) * skip_top), len(members) - k)
        ranked = members[np.argsort(-keys[members], kind="stable")]
        if sampling == "stratified":
            rest = ranked[skip:]
            unflagged = rest[np.isfinite(keys[rest])]
            if len(unflagged) >= k:  # rows flagged ``last`` only when too few others are left
                rest = unflagged
            pos = stratified_pick(
                scores[rest], k, score_bins, np.random.default_rng([seed, int(g)])
            )
            keep.append(rest[pos])
        else:
            keep.append(ranked[skip : skip + k])
    return np.sort(np.concatenate(keep))


def label_conflicts(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows whose gold label (>= 0; -100 = unlabeled) the teacher's top class contradicts:
    among the most uncertain rows these are mostly ambiguous fragments or label noise."""
    labels = np.asarray(labels)
    return (labels >= 0) & (labels != predicted)


def selection_stats(scores: np.ndarray, chosen: np.ndarray, predicted: np.ndarray) -> dict:
    """What the selection kept, for the run folder."""
    mask = np.zeros(len(scores), dtype=bool)
    mask[chosen] = True
    classes = {
        str(int(c)): {"all": int((predicted == c).sum()), "kept": int((predicted[mask] == c).sum())}
        for c in np.unique(predicted)
    }
    return {
        "kept": int(mask.sum()),
        "total": len(scores),
        "score_mean_kept": float(scores[mask].mean()),
        "score_mean_dropped": float(scores[~mask].mean()) if (~mask).any() else None,
        "classes": classes,
    }
