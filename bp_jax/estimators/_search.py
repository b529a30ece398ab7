"""GridSearchCV searching a bp_jax MLP as one program, with scikit-learn's signature and results (as
`sklearn/model_selection/_search.py`): the fits one program can train go to `_members`, the others train alone;
each fitted member is scored and `cv_results_` laid out as sklearn lays it out."""

import collections
import copy
import functools
import itertools
import numbers
import time
import warnings
from typing import Any, NamedTuple

import numpy as np
from joblib import effective_n_jobs, parallel_config
from scipy.stats import rankdata
from sklearn.base import clone, is_classifier
from sklearn.exceptions import FitFailedWarning
from sklearn.metrics import check_scoring
from sklearn.model_selection import GridSearchCV as SklearnGridSearchCV
from sklearn.model_selection import ParameterGrid, check_cv
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing, indexable
from sklearn.utils.validation import _check_method_params, _check_sample_weight, validate_data

from bp_jax.estimators._base import densified, precision, seed_of, weighted
from bp_jax.estimators._members import Block, Member, train_lbfgs, train_parts
from bp_jax.estimators._multilayer_perceptron import BaseMLP
from bp_jax.estimators._training import non_finite_error, plan

#: Grid parameters that change data, not the compiled program: a grid over them is one `fit_ensemble` program.
VECTORISED = (
    "learning_rate",
    "learning_rate_init",
    "power_t",
    "random_state",
    "alpha",
    "momentum",
    "nesterovs_momentum",
    "beta_1",
    "beta_2",
    "epsilon",
    "tol",
    "n_iter_no_change",
    "max_iter",
    "max_fun",
)


class _Fitted(NamedTuple):
    """One (grid point × fold) fit: the fitted estimator (None if its fit failed), the failure as one line, and
    the seconds it took (a program member: its share of the program's time)."""

    estimator: Any
    error: str | None
    fit_time: float


class GridSearchCV(SklearnGridSearchCV):
    """sklearn.model_selection.GridSearchCV for a bp_jax MLPRegressor or MLPClassifier (or a Pipeline ending in one),
    searched as one program.

    Every (grid point × fold) is a member of one `fit_ensemble` call, on its fold's rows as the pipeline's earlier steps
    transform them when fitted on that fold, with its own key, solver hyperparameters, α, learning-rate schedule and
    stopping rule (stopped inside the program). Members of one fold and seed (shuffle=False: of one fold) share their
    minibatches (one gather, one matmul). Each fitted member is then scored on its test fold as sklearn scores it, and
    `cv_results_` laid out as sklearn's.

    The grid may vary the pipeline's earlier steps freely and the estimator's VECTORISED parameters only: any other is
    refused in one line naming it. Members sharing a program shape (features, outputs, batch size, steps per epoch,
    max_iter, shuffle) share one call of one program; n_jobs > 1 (or −1: every CPU) splits them into at most that many
    calls run concurrently on threads (the same results up to float rounding: a call's groups of members sharing a
    minibatch may be smaller; calls of one size share one compiled program, folds straddling 33 rows aside); programs of
    different shapes, and the fits trained one by one, run one after another. solver="lbfgs" is full batch: the members
    of one fold are one call of the vmapped lbfgs program (a while loop in which each member stops on its own: its own
    initialisation, α, tol, max_iter and max_fun), the folds one after another. Trained one by one, as sklearn would:
    sgd and adam with early_stopping=True, and full-batch folds (batch_size ≥ the fold's rows).

    It takes sklearn's parameters (its `__init__` is sklearn's), with these meanings here:

    - `estimator`: the MLPRegressor, MLPClassifier or Pipeline ending in one;
    - `param_grid`: a dict of parameter lists, or a list of such dicts;
    - `scoring`: None (the estimator's score), a name, a callable, or several in a list or dict;
    - `n_jobs`: the most concurrent programs (None: 1, or joblib's `parallel_config`; −1: every CPU);
    - `refit`: refit the best on all the data (a metric's name with several metrics, or a callable);
    - `cv`: the folds, as sklearn's `check_cv` takes them;
    - `verbose`: print the count of fits when > 0;
    - `pre_dispatch`: accepted and unused;
    - `error_score`: a failed fit's score, or "raise";
    - `return_train_score`: also score each fit on its training rows.

    Attributes:
        cv_results_: sklearn's dict of per-candidate results (fit_time is each member's share of its program's).
        best_index_: the best candidate's index.
        best_params_: its parameters.
        best_score_: its mean test score.
        best_estimator_: the refitted estimator.

    Examples:
        >>> import numpy as np
        >>> from bp_jax.estimators import GridSearchCV, MLPRegressor
        >>> X = np.linspace(-1, 1, 60).reshape(-1, 1)
        >>> model = MLPRegressor(
        ...     hidden_layer_sizes=(4,), batch_size=10, max_iter=30, tol=1e-2, n_iter_no_change=2, random_state=0
        ... )
        >>> search = GridSearchCV(model, {"learning_rate_init": [0.01, 0.1], "alpha": [1e-4, 1e-2]}, cv=3)
        >>> search.fit(X, 2 * X[:, 0]).cv_results_["mean_test_score"].shape  # 12 fits, one program
        (4,)
        >>> sorted(search.best_params_)
        ['alpha', 'learning_rate_init']
    """

    def fit(self, X, y=None, *, groups=None, **params):
        """Train and score every (grid point × fold), then refit the best on all of X, y.

        Args:
            X: the inputs.
            y: the targets.
            groups: group labels for the splitter.
            **params: fit parameters (e.g. sample_weight; a pipeline's `<step>__sample_weight`), indexed per fold
                and passed to each fit (and the refit) as sklearn's with metadata routing disabled.

        Returns:
            self.

        Raises:
            ValueError: the grid varies a parameter one program cannot search, or every fit failed.
        """
        final, _ = _searched(self.estimator)
        candidates = list(ParameterGrid(self.param_grid))
        _check_vectorised({key for candidate in candidates for key in candidate}, self.estimator)
        if not (self.error_score == "raise" or _is_real(self.error_score)):
            raise ValueError(f"error_score must be 'raise' or a number, got {self.error_score!r}")
        scorer, self.scorer_ = self._scorers()
        X, y = indexable(X, y)
        params = _check_method_params(X, params)
        weight = params.get("sample_weight")  # scores weighted too, as sklearn's (when its scorers take weights)
        weight = weight if weight is not None and self._check_scorers_accept_sample_weight() else None
        splits = list(check_cv(self.cv, y, classifier=is_classifier(final)).split(X, y, groups))
        self.n_splits_ = len(splits)
        if self.verbose > 0:
            print(
                f"Fitting {len(splits)} folds for each of {len(candidates)} candidates, "
                f"totalling {len(candidates) * len(splits)} fits"
            )
        jobs = _jobs(self.n_jobs)
        fits = _fit_candidates(
            self.estimator, candidates, X, y, params, splits, jobs=jobs, raise_errors=self.error_score == "raise"
        )
        _warn_or_raise_about_failures(fits, self.error_score)
        tested = self._score_fits(fits, scorer, X, y, [test for _, test in splits], weight)
        trained = None
        if self.return_train_score:
            trained = self._score_fits(fits, scorer, X, y, [train for train, _ in splits], weight)
        self.cv_results_ = _cv_results(candidates, len(splits), fits, tested, trained, self.error_score)
        self.multimetric_ = "mean_test_score" not in self.cv_results_
        self._select_best()
        if self.refit:
            self.best_estimator_ = clone(self.estimator).set_params(**clone(self.best_params_, safe=False))
            start = time.time()
            self.best_estimator_.fit(X, y, **params)
            self.refit_time_ = time.time() - start
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
        return self

    def _scorers(self):
        """(the scorer to call: returns a number, or a dict for several metrics; scorer_ as sklearn keeps it)."""
        if self.scoring is None or isinstance(self.scoring, str) or callable(self.scoring):
            scorer = check_scoring(self.estimator, self.scoring)
            return scorer, scorer
        scorer = check_scoring(self.estimator, self.scoring)  # checks the names and scorers of a list or dict
        named = self.scoring if isinstance(self.scoring, dict) else {name: name for name in self.scoring}
        self._check_multimetric_refit(named)
        return scorer, {name: check_scoring(self.estimator, one) for name, one in named.items()}

    def _check_multimetric_refit(self, metrics) -> None:
        if (
            self.refit is not False
            and not callable(self.refit)
            and not (isinstance(self.refit, str) and self.refit in metrics)
        ):
            raise ValueError(
                "For multi-metric scoring, the parameter refit must be set to a scorer key or a callable to refit "
                f"an estimator with the best parameter setting on the whole data; refit={self.refit!r} was passed "
                f"(the metrics: {', '.join(metrics)})"
            )

    def _score_fits(self, fits: list[_Fitted], scorer, X, y, split_rows: list, sample_weight=None) -> list:
        """Each fit's (score, seconds) on its split's rows (fits are candidate-major). The default scorer (the
        estimator's `score`: R², or accuracy for a classifier; also when named "r2" or "accuracy") takes the rows of
        a split once through the earlier steps its fits share and validates them once, then scores each fit's
        predictions alone (`forward`, `r2`/`accuracy`: sklearn's formulas); where that shared part fails, and for
        any other scorer, the scorer scores each fit; with the rows' `sample_weight`, if any."""
        default = self.scoring in (None, "accuracy" if is_classifier(self.estimator) else "r2")
        scored: list = [(None, 0.0)] * len(fits)
        sharing: dict[tuple, list[int]] = {}
        for index, fitted in enumerate(fits):
            if fitted.estimator is not None:
                earlier = fitted.estimator.steps[:-1] if isinstance(fitted.estimator, Pipeline) else []
                split = index % len(split_rows)
                sharing.setdefault((split, *(id(step) for _, step in earlier)), []).append(index)
        for (split, *_), indices in sharing.items():
            start = time.perf_counter()
            rows = split_rows[split]
            weight = None if sample_weight is None else _safe_indexing(sample_weight, rows)
            shared = _default_scorer_rows(fits[indices[0]].estimator, X, y, rows) if default else None
            if shared is None:
                for index in indices:
                    scored[index] = self._call_scorer(fits[index], scorer, X, y, rows, weight)
                continue
            x, y_rows = shared
            finals = [_searched(fits[index].estimator)[0] for index in indices]  # one architecture: the grid's
            stacked = [[np.stack(layers) for layers in zip(*(getattr(f, name) for f in finals))] for name in _WEIGHTS]
            values = finals[0]._score_weights(x, y_rows, *stacked, sample_weight=weight).tolist()  # one score per fit
            seconds = (time.perf_counter() - start) / len(indices)
            for index, value in zip(indices, values):
                scored[index] = (value, seconds)
        return scored

    def _call_scorer(self, fit: _Fitted, scorer, X, y, rows, sample_weight=None):
        """The scorer's value for a fitted member on X[rows] (a number or a dict; None for a failed fit or
        scorer) and the seconds it took."""
        if fit.estimator is None:
            return None, 0.0
        start = time.perf_counter()
        try:
            weighted_by = {} if sample_weight is None else {"sample_weight": sample_weight}
            value = scorer(fit.estimator, _safe_indexing(X, rows), _safe_indexing(y, rows), **weighted_by)
        except Exception as error:
            if self.error_score == "raise":
                raise
            warnings.warn(
                f"Scoring failed; the score on this train-test partition is set to {self.error_score}: "
                f"{_describe(error)}",
                UserWarning,
                stacklevel=3,
            )
            return None, time.perf_counter() - start
        if not isinstance(value, dict) and not _is_real(value):
            raise ValueError(f"scoring must return a number, got {value!r} ({type(value).__name__}) instead")
        return value, time.perf_counter() - start

    def _select_best(self) -> None:
        """best_index_, best_score_ and best_params_ as sklearn picks them: the best mean test score (rank 1,
        the first of ties) of the refit metric, or the index a callable refit returns."""
        results = self.cv_results_
        if self.multimetric_:
            self._check_multimetric_refit(
                [key.removeprefix("mean_test_") for key in results if key.startswith("mean_test_")]
            )
            if self.refit is False:
                return
        if callable(self.refit):
            chosen = self.refit(results)
            if not isinstance(chosen, numbers.Integral):
                raise TypeError(f"refit must return the index of the best candidate (an int), got {chosen!r}")
            best = int(chosen)
            if not 0 <= best < len(results["params"]):
                raise IndexError(f"refit returned {best}, outside the {len(results['params'])} candidates")
        else:
            metric = self.refit if self.multimetric_ else "score"
            best = int(results[f"rank_test_{metric}"].argmin())
            self.best_score_ = results[f"mean_test_{metric}"][best]
        self.best_index_ = best
        self.best_params_ = results["params"][best]


#: A fitted estimator's weights, in sklearn's layout.
_WEIGHTS = ("coefs_", "intercepts_")


def _default_scorer_rows(searched, X, y, rows):
    """(X[rows] through the searched pipeline's earlier steps, validated for its final estimator; y[rows] as an
    array) as the default scorer sees them, or None when they are not plain (x failing the earlier steps or
    validation, y non-numeric or not finite for a regressor, not 1-D for a classifier): the scorer reports those."""
    final, name = _searched(searched)
    try:
        x = _safe_indexing(X, rows)
        if name is not None and len(searched.steps) > 1:
            x = searched[:-1].transform(x)
        x = densified(
            validate_data(final, x, reset=False, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32))
        )
    except Exception:
        return None
    y_rows = np.asarray(_safe_indexing(y, rows))
    plain = (
        y_rows.ndim == 1
        if is_classifier(final)
        else y_rows.dtype.kind in "fiub" and y_rows.ndim in (1, 2) and bool(np.all(np.isfinite(y_rows)))
    )
    return (x, y_rows) if plain else None


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(error: BaseException) -> str:
    """An exception as one line: its type and message."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _check_vectorised(keys, searched) -> None:
    """ValueError naming the first grid key one program cannot search: the estimator's parameters outside
    VECTORISED, the final step itself and the Pipeline's own parameters (steps, memory, …); a pipeline's earlier
    steps and their parameters change only the data."""
    final, name = _searched(searched)
    earlier = {step for step, _ in searched.steps[:-1]} if name is not None else set()
    for key in sorted(keys):
        step, _, parameter = key.rpartition("__") if name is not None else ("", "", key)
        if step.split("__")[0] in earlier or (not step and key in earlier):
            continue
        if step != (name or "") or parameter not in VECTORISED:
            raise ValueError(
                f"GridSearchCV: the grid varies {key!r}, which one program cannot search: it vectorises the "
                f"{type(final).__name__}'s {', '.join(VECTORISED)} and a pipeline's earlier steps (search others "
                "with sklearn.model_selection.GridSearchCV)"
            )


def _searched(estimator) -> tuple[Any, str | None]:
    """(the bp_jax estimator searched, its step name in a Pipeline or None); TypeError for anything else."""
    final, name = estimator, None
    if isinstance(estimator, Pipeline) and estimator.steps:
        name, final = estimator.steps[-1]
    if not isinstance(final, BaseMLP):
        raise TypeError(
            f"bp_jax.estimators.GridSearchCV searches MLPRegressor or MLPClassifier, or a Pipeline ending in one, "
            f"got {type(final).__name__}; use sklearn.model_selection.GridSearchCV"
        )
    return final, name


#: What validating its training data sets on an estimator: copied to every member of one block.
_DATA_ATTRIBUTES = (
    "n_features_in_",
    "feature_names_in_",
    "classes_",
    "_label_binarizer",
    "n_outputs_",
    "out_activation_",
)


def _jobs(n_jobs) -> int:
    """sklearn's n_jobs as a count of concurrent programs: None → 1 (or joblib's `parallel_config`), −1 → every
    CPU, −k → CPUs + 1 − k."""
    if n_jobs is not None and not (isinstance(n_jobs, numbers.Integral) and not isinstance(n_jobs, bool) and n_jobs):
        raise ValueError(f"n_jobs must be None or a nonzero integer, got {n_jobs!r}")
    with parallel_config(backend="threading"):  # threads, as `train_parts` runs them; a caller's n_jobs kept
        return effective_n_jobs(n_jobs)


def _fit_candidates(estimator, candidates, X, y, params, splits, *, jobs: int, raise_errors: bool) -> list[_Fitted]:
    """Every (candidate, split) fitted, candidate-major: those one program can train as its members (grouped by
    program shape, one `fit_ensemble` call each, or up to `jobs` concurrent calls over parts of them:
    `split_members`; sample weights a targets leaf), the others by their own fit (also any with fit parameters
    other than a plain estimator's sample_weight). A failed fit holds its error (raised at once with `raise_errors`)."""
    fitted: list[_Fitted | None] = [None] * (len(candidates) * len(splits))
    blocks: dict[tuple, Block] = {}
    programs: dict[tuple, list[Member]] = {}
    lbfgs_programs: dict[tuple, list[Member]] = {}  # (objective, block): lbfgs members of one fold
    prepared_in: dict[int, float] = {}
    base = None if isinstance(estimator, Pipeline) else clone(estimator)
    refusal: Exception | None = None
    for index, (candidate, (fold, (train_rows, _))) in enumerate(itertools.product(candidates, enumerate(splits))):
        start = time.perf_counter()
        if isinstance(estimator, Pipeline):  # its steps, and steps in the grid: fresh copies for every fit
            searched = clone(estimator).set_params(**clone(candidate, safe=False))
        else:  # one clone in all; per fit a copy with its own copy of the grid's values (VECTORISED names)
            searched = copy.copy(base)
            vars(searched).update(clone(candidate, safe=False))
        member, name = _searched(searched)
        fold_data = lambda rows=train_rows: (_safe_indexing(X, rows), _safe_indexing(y, rows))
        fold_params = _check_method_params(X, params, train_rows)
        try:
            if fold == 0:  # candidate-major: a candidate's parameters are checked once, at its first fold
                refusal = _refusal(member)
            if refusal is not None:
                raise refusal
            lbfgs = member.solver == "lbfgs"  # full batch, its members one vmapped program per fold
            other_params = bool(set(params) - {"sample_weight"}) or (name is not None and bool(params))
            alone = other_params or (not lbfgs and member.early_stopping)
            # the earlier steps' grid values by identity: members of one fold and the same values share a block
            block_key = (
                fold,
                tuple((key, id(value)) for key, value in candidate.items() if name and key.split("__")[0] != name),
            )
            if not alone and block_key not in blocks:
                blocks[block_key] = _block(searched, member, name, *fold_data(), fold_params.get("sample_weight"))
            steps = None if alone or lbfgs else plan(member.batch_size, len(blocks[block_key].x))
        except Exception as error:
            if raise_errors:
                raise
            fitted[index] = _Fitted(None, _describe(error), time.perf_counter() - start)
            continue
        if alone or (not lbfgs and steps is not None and steps.batch_size == len(blocks[block_key].x)):  # full batch
            fitted[index] = _fit_alone(searched, *fold_data(), fold_params, raise_errors=raise_errors, start=start)
            continue
        block = blocks[block_key]
        if name is not None:
            searched.steps = [*block.prefix, searched.steps[-1]]
        member.__dict__.update(block.attributes)
        entry = Member(index, searched, member, block_key, seed_of(member.random_state))
        if lbfgs:
            loss_fn = member._objective(block.x.shape[1], members_batch=len(block.x))
            lbfgs_programs.setdefault((loss_fn, block_key), []).append(entry)
        else:
            assert steps is not None  # sgd or adam on minibatches: the fits alone went above
            program = member._program(block.x.shape[1], members_batch=steps.batch_size)
            # rows: each member's data; shuffle: static, a program of its own
            shape = (program, steps._replace(rows=0), member.max_iter, block.x.dtype, bool(member.shuffle))
            programs.setdefault(shape, []).append(entry)
        prepared_in[index] = time.perf_counter() - start
    widest = np.result_type(np.float32, *(block.x.dtype for block in blocks.values()))
    with precision(widest):  # float64 folds train in float64, x64 scoped (`train_parts`' threads enter it too)
        for ((loss_fn, transform), steps, max_iter, _, shuffle), members in programs.items():
            for part, runs, share in train_parts(loss_fn, transform, steps, max_iter, members, blocks, jobs, shuffle):
                for member, (run, diverged_at) in zip(part, runs):
                    rows = len(blocks[member.block].x)
                    adopt = functools.partial(
                        _adopt_run, run=run, steps=steps._replace(rows=rows), diverged_at=diverged_at
                    )
                    fitted[member.position] = _adopted(
                        member, adopt, prepared_in[member.position] + share, raise_errors
                    )
        for (loss_fn, block_key), members in lbfgs_programs.items():
            start = time.perf_counter()
            results = train_lbfgs(loss_fn, members, blocks[block_key])
            share = (time.perf_counter() - start) / len(members)
            for member, result in zip(members, results):
                adopt = functools.partial(type(member.estimator)._adopt_lbfgs, result=result)
                fitted[member.position] = _adopted(member, adopt, prepared_in[member.position] + share, raise_errors)
    assert all(fit is not None for fit in fitted)
    return fitted  # type: ignore[return-value]


def _refusal(estimator: BaseMLP) -> Exception | None:
    """The error `fit` would raise for the estimator's parameters (scikit-learn's `_validate_params`, then bp_jax's
    `_check_params`), or None."""
    try:
        estimator._validate_params()
        estimator._check_params()
    except ValueError as error:  # scikit-learn's InvalidParameterError is a ValueError
        return error
    return None


def _adopt_run(estimator, *, run, steps, diverged_at: int) -> None:
    """A member's stochastic run as its estimator's fitted state; sklearn's error if it diverged."""
    if run is None:
        raise non_finite_error(diverged_at)
    estimator._adopt(run, steps, incremental=False, stopping=None)


def _adopted(member: Member, adopt, seconds: float, raise_errors: bool) -> _Fitted:
    """A trained member's fit: its estimator given a fresh history, then `adopt(estimator)`; the ValueError of
    weights that are not finite is the fit's failure (raised with `raise_errors`)."""
    member.estimator._start(member.seed)
    try:
        adopt(member.estimator)
    except ValueError as error:
        if raise_errors:
            raise
        return _Fitted(None, _describe(error), seconds)
    return _Fitted(member.searched, None, seconds)


def _block(searched, member, name: str | None, x, y, sample_weight) -> Block:
    """One fold's data as `member` (the bp_jax estimator in `searched`) sees it: through the pipeline's earlier
    steps fitted on it, validated, targets encoded (with the fold's row weights, if any: `weighted`)."""
    if name is not None and len(searched.steps) > 1:
        x = searched[:-1].fit_transform(x, y)
    x, y = member._validate_input(x, y, reset=True)
    targets = member._encode_targets(y, first=True).astype(x.dtype)
    if sample_weight is not None:
        targets = weighted(targets, _check_sample_weight(sample_weight, x))
    attributes = {attribute: getattr(member, attribute) for attribute in _DATA_ATTRIBUTES if hasattr(member, attribute)}
    return Block(list(searched.steps[:-1]) if name is not None else [], x, targets, attributes)


def _fit_alone(searched, x, y, params: dict, *, raise_errors: bool, start: float) -> _Fitted:
    try:
        searched.fit(x, y, **params)
    except Exception as error:
        if raise_errors:
            raise
        return _Fitted(None, _describe(error), time.perf_counter() - start)
    return _Fitted(searched, None, time.perf_counter() - start)


def _warn_or_raise_about_failures(fits: list[_Fitted], error_score) -> None:
    """sklearn's rule: ValueError if every fit failed, else a FitFailedWarning; both one line, the errors counted."""
    errors = collections.Counter(fit.error for fit in fits if fit.error is not None)
    if not errors:
        return
    failed = sum(errors.values())
    summary = "; ".join(f"{count} × {error}" for error, count in errors.items())
    if failed == len(fits):
        raise ValueError(f"All the {failed} fits failed (set error_score='raise' to see the first): {summary}")
    warnings.warn(
        f"{failed} fits failed out of a total of {len(fits)}; their scores are set to {error_score} "
        f"(error_score='raise' raises instead): {summary}",
        FitFailedWarning,
        stacklevel=3,
    )


def _cv_results(candidates, n_splits: int, fits, tested, trained, error_score) -> dict:
    """cv_results_ as sklearn's GridSearchCV lays it out: fit and score times, a masked array per parameter,
    params, and per metric the split scores, their mean and (unweighted) std, and the test rank (failed fits
    score error_score; NaN means rank last)."""
    results: dict[str, Any] = {}
    shape = (len(candidates), n_splits)

    def store(key: str, values, *, splits: bool = False, rank: bool = False) -> None:
        array = np.asarray(values, np.float64).reshape(shape)
        if splits:
            for split in range(n_splits):
                results[f"split{split}_{key}"] = array[:, split]
        means = array.mean(axis=1)
        results[f"mean_{key}"] = means
        if key.startswith(("train_", "test_")) and not np.all(np.isfinite(means)):
            warnings.warn(
                f"One or more of the {key.split('_')[0]} scores are non-finite: {means}", UserWarning, stacklevel=4
            )
        results[f"std_{key}"] = np.sqrt(((array - means[:, None]) ** 2).mean(axis=1))
        if rank:
            if np.all(np.isnan(means)):
                results[f"rank_{key}"] = np.ones(len(means), np.int32)
            else:
                worst = np.nanmin(means) - 1
                results[f"rank_{key}"] = rankdata(-np.nan_to_num(means, nan=worst), method="min").astype(np.int32)

    store("fit_time", [fit.fit_time for fit in fits])
    store("score_time", [time_taken for _, time_taken in tested])
    results |= _parameter_arrays(candidates)
    results["params"] = candidates
    first = next((value for value, _ in tested if value is not None), None)
    metrics = list(first) if isinstance(first, dict) else ["score"]
    value_of = lambda value, metric: (
        error_score if value is None else value[metric] if isinstance(value, dict) else value
    )
    for metric in metrics:
        store(f"test_{metric}", [value_of(value, metric) for value, _ in tested], splits=True, rank=True)
        if trained is not None:
            store(f"train_{metric}", [value_of(value, metric) for value, _ in trained], splits=True)
    return results


def _parameter_arrays(candidates) -> dict[str, np.ma.MaskedArray]:
    """param_<name>: a masked array over the candidates (masked where a candidate lacks the parameter), of the
    values' own dtype unless they are strings or sequences (then object), as sklearn lays them out."""
    values: dict[str, dict[int, Any]] = {}
    for index, candidate in enumerate(candidates):
        for name, value in candidate.items():
            values.setdefault(f"param_{name}", {})[index] = value
    arrays = {}
    for key, by_index in values.items():
        try:
            inferred = np.array(list(by_index.values()))
            dtype = inferred.dtype if inferred.dtype.kind != "U" and inferred.ndim == 1 else np.dtype(object)
        except ValueError:  # sequences of different lengths
            dtype = np.dtype(object)
        array = np.ma.MaskedArray(np.empty(len(candidates), dtype), mask=True)
        for index, value in by_index.items():
            array[index] = value
        arrays[key] = array
    return arrays
