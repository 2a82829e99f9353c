"""One L-BFGS run across several local QM models (qm_expansion.py).

On local models a minimisation takes a fresh QM gradient every k
iterations.  Run as one L-BFGS minimisation per model, L-BFGS started over
at every QM gradient: it forgot its curvature pairs and began again with a
steepest-descent step of guessed length.  Kept as one run, it keeps them:
they are differences of gradients of the data term and of GFN-FF's
curvature, which every local model of the run shares.  On the 1us0 helix
from the 1.5 A start (GFN2, weight 0.25, 10 cycles of 25 iterations, a QM
gradient every 10) R-work reached 0.084 in one run per cycle against 0.193
started over (31 QM gradients either way; a QM gradient at every step:
0.057 with 296).

The cctbx and mmtbx minimisers the refinements use
(mmtbx.refinement.minimization.lbfgs,
cctbx.maptbx.real_space_refinement_simple.lbfgs,
cctbx.geometry_restraints.lbfgs) run scitbx.lbfgs on themselves in their
constructor and call the evaluator's `callback_after_step(minimizer)` after
each iteration, before the next direction is taken from the last gradient.
There the restraints manager expands anew at the current point, keeping the
energy there (so the next line search starts from the right value), and
the last gradient is overwritten in place with the one on the new model.
"""


class Reexpansion:
    """What one minimisation on local models needs: the restraints manager
    (expanded at the start), a QM gradient every `every` iterations, and
    the run's iterations (none is taken after the last).  After the run,
    `failed` says why the force field stopped answering (the run stopped
    there, after `iterations_done`), or is None."""

    def __init__(self, restraints_manager, every, iterations):
        self.restraints_manager = restraints_manager
        self.every = every
        self.iterations = iterations
        self.iterations_done = 0
        self.failed = None

    def minimiser(self, lbfgs_class):
        """lbfgs_class, taking a fresh QM gradient every `every` iterations."""
        run = self

        class OnLocalModels(lbfgs_class):
            def compute_functional_and_gradients(self):
                f, g = super().compute_functional_and_gradients()
                self._last_gradient = g
                return f, g

            def callback_after_step(self, minimizer):
                own = getattr(super(), "callback_after_step", None)
                if own is not None and own(minimizer) is True:
                    return True
                return run.after_step(self, minimizer)

        OnLocalModels.__name__ = lbfgs_class.__name__
        return OnLocalModels

    def after_step(self, evaluator, minimizer):
        """True stops the run (the force field failed)."""
        self.iterations_done = minimizer.iter()
        if self.iterations_done % self.every or self.iterations_done >= self.iterations:
            return False
        g = evaluator._last_gradient
        grm = self.restraints_manager
        grm.reexpand()
        ok, why = grm.expansion_available()
        if not ok:
            self.failed = why
            return True
        _, new = evaluator.compute_functional_and_gradients()
        new = new.deep_copy()
        # the minimiser holds g: its next direction comes from it
        g.clear()
        g.extend(new)
        evaluator._last_gradient = g
        return False
