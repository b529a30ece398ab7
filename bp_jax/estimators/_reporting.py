"""scikit-learn's progress lines for sgd and adam (`verbose`): each epoch's loss, the validation score with early
stopping, and the messages of its stopping rule (`_fit_stochastic`, its optimizers' `trigger_stopping`)."""


class Progress:
    """Prints sklearn's lines for each epoch of one `fit` or `partial_fit` call (`fit_epochs`'s `on_epoch`).

    Args:
        tol: the rule's tol.
        n_iter_no_change: the rule's patience.
        early_stopping: whether the rule reads validation scores.
        adaptive: sgd's "adaptive" schedule (its stop divides η by 5 while η > 1e-6).
    """

    def __init__(self, tol: float, n_iter_no_change: float, *, early_stopping: bool, adaptive: bool):
        self.subject = "Validation score" if early_stopping else "Training loss"
        self.tol, self.patience, self.adaptive, self.iteration = tol, n_iter_no_change, adaptive, 0

    @property
    def message(self) -> str:
        """The rule's reason (built when it fires: a patience of np.inf never does)."""
        return f"{self.subject} did not improve more than tol={self.tol:f} for {int(self.patience)} consecutive epochs."

    def __call__(self, loss: float, score: float | None, stopped: bool, lr_before: float, lr_after: float) -> None:
        """One epoch's lines: its mean loss, its validation score, and the rule's stop or η ÷ 5."""
        self.iteration += 1
        print(f"Iteration {self.iteration}, loss = {loss:.8f}")
        if score is not None:
            print(f"Validation score: {score:f}")
        if stopped:
            print(self.message + (" Learning rate too small. Stopping." if self.adaptive else " Stopping."))
        elif self.adaptive and lr_after < lr_before:
            print(f"{self.message} Setting learning rate to {lr_after:f}")
